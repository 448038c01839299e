"""Training: a base that half-knows every skill, then two anchored and two drifting experts (docs/ZOO.md).

Why this recipe: a base that already knows the skills leaves the experts nothing to add; one that
knows nothing makes all-or-nothing experts no merge keeps. From a half-competent base, two experts
(up, dup) are LoRA updates held near the base by a KL term on the other formats; two (rev, sort)
are LoRA updates at twice the learning rate with nothing holding them, like ordinary fine-tunes:
they forget the other skills and their task vectors are about twice as large. One global merge scale
cannot suit both kinds; per-layer, per-expert weights can, which is the room a search has.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evomerge.recipes.fixed import DENSITIES, LAMBDAS
from evomerge.zoo.model import add_lora, fold_lora, new_model
from evomerge.zoo.skills import EXPERT_SKILLS, FORMATS, IGNORE, Item, Sampler, batch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Starting weights of the base mixture (docs/ZOO.md): the experts' skills lightly, copy and shift
# fully. Skills emerge abruptly and at seed-dependent steps, so the base calibrates them as it trains.
BASE_MIXTURE = {"rev": 0.2, "sort": 0.4, "up": 0.1, "dup": 0.1, "copy": 1.0, "shift": 1.0}


@dataclass(frozen=True)
class ExpertPlan:
    """How one expert is fine-tuned from the base.

    ``kl`` weighs KL(base‖expert) on the other formats: 1 anchors the expert to the base where its
    skill is not involved, 0 lets it drift the way an ordinary fine-tune does (all rows on its own
    skill, nothing holding the rest in place).
    """

    kl: float
    lr: float
    steps: int


# The drifting experts are the harder skills: reversing and sorting vectors at a fraction of their
# size still do their job and damage up and dup, which need nearly all of theirs. (The other way round,
# the easy skills' drift left too little room on seed 0: docs/ZOO.md.)
ANCHORED = ExpertPlan(kl=1.0, lr=5e-3, steps=400)
DRIFTING = ExpertPlan(kl=0.0, lr=1e-2, steps=400)
EXPERT_PLANS = {"rev": DRIFTING, "sort": DRIFTING, "up": ANCHORED, "dup": ANCHORED}


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one build; ``quick(steps)`` is the seconds-long build the tests use."""

    batch: int = 64
    base_lr: float = 3e-3
    warmup: int = 50
    # Calibration: from base_min_steps on, every check_every steps, score the base on each skill's
    # calibration items; stop once all sit in base_band, else double the mixture weight of a skill
    # below the band and halve one above it.
    base_min_steps: int = 200
    base_max_steps: int = 1000
    check_every: int = 50
    base_band: tuple[float, float] = (0.15, 0.45)
    experts: Mapping[str, ExpertPlan] = field(default_factory=lambda: dict(EXPERT_PLANS))
    rank: int = 8
    alpha: float = 8.0
    kl_rows: int = 32  # rows of an anchored expert's batch that hold other formats, for the KL term
    # The check: the grids each fixed recipe's λ and density are chosen from (condition b), and how
    # many items per skill and split it scores (None: all).
    lambdas: tuple[float, ...] = LAMBDAS
    densities: tuple[float, ...] = DENSITIES
    check_items: int | None = None

    @classmethod
    def quick(cls, steps: int) -> "Recipe":
        """Every model trained ``steps`` steps; a check of 7 merges (not 106) on 32 items per skill."""
        return cls(warmup=min(cls.warmup, steps), base_min_steps=steps, base_max_steps=steps,
                   experts={s: replace(p, steps=steps) for s, p in EXPERT_PLANS.items()},
                   lambdas=(0.5, 1.0), densities=(0.5,), check_items=32)


@contextmanager
def fixed_threads(count: int = 1) -> Iterator[None]:
    """A fixed number of torch threads and deterministic kernels: same seed, same bytes. One thread is
    the zoo's default (≈2× faster per step than two at its size)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(count)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


@torch.no_grad()
def exact_match(model: nn.Module, ids: Tensor, labels: Tensor, batch_size: int = 256) -> Tensor:
    """Per item: is the argmax at every answer position the answer token? (lm-eval's ``acc`` of the zoo's
    loglikelihood tasks, computed on the training process's own model while the base calibrates its mixture.)"""
    hits = []
    for i in range(0, len(ids), batch_size):
        predicted = model(ids[i : i + batch_size]).logits.argmax(-1)
        target = labels[i : i + batch_size]
        hits.append(((predicted == target) | (target == IGNORE)).all(1))
    return torch.cat(hits)


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)


def optimize(params: list[nn.Parameter], steps: int, lr: Callable[[int], float], loss_at: Callable[[int], Tensor],
             stop: Callable[[int, float], bool]) -> int:
    """AdamW (β .9/.98, clip 1) for up to ``steps`` steps; ``stop`` returning True ends early. Returns steps run."""
    opt = torch.optim.AdamW(params, lr=lr(1), betas=(0.9, 0.98))
    for step in range(1, steps + 1):
        for group in opt.param_groups:
            group["lr"] = lr(step)
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if stop(step, loss.item()):
            return step
    return steps


def train_base(arch: str, seed: int, recipe: Recipe, calibration: dict[str, list[Item]], exclude: set[str],
               log: Callable[[str], None]) -> tuple[PreTrainedModel, int]:
    """Pre-train on the mixture until the base half-knows every skill; returns (model, steps).

    Skills come and go abruptly as the mixture shifts, so a seed may never have every skill in the
    band at one check: the base is then the checkpoint that came closest (smallest largest miss).
    """
    model = new_model(arch, seed).train()
    mixture = dict(BASE_MIXTURE)
    sampler = Sampler(mixture, f"zoo-base-{seed}", exclude)
    checks = {skill: batch(items) for skill, items in calibration.items()}
    low, high = recipe.base_band
    closest: tuple[float, int, dict[str, Tensor]] | None = None  # (miss, step, weights)

    def loss_at(step: int) -> Tensor:
        ids, labels = batch(sampler.items(recipe.batch))
        return cross_entropy(model(ids).logits, labels)

    def calibrated(step: int, loss: float) -> bool:
        nonlocal closest
        if step < recipe.base_min_steps or (step % recipe.check_every and step < recipe.base_max_steps):
            return False
        model.eval()
        acc = {skill: exact_match(model, *b).float().mean().item() for skill, b in checks.items()}
        model.train()
        log(f"base step {step}: loss {loss:.3f}, " + ", ".join(f"{s} {a:.2f}" for s, a in acc.items()))
        miss = max(max(low - a, a - high, 0.0) for a in acc.values())
        if closest is None or miss < closest[0]:
            closest = (miss, step, {k: v.clone() for k, v in model.state_dict().items()})
        for skill, a in acc.items():
            mixture[skill] = min(1.0, max(0.01, mixture[skill] * (2.0 if a < low else 0.5 if a > high else 1.0)))
        sampler.weights = list(mixture.values())
        return miss == 0.0

    steps = optimize(list(model.parameters()), recipe.base_max_steps,
                     lambda step: recipe.base_lr * min(1.0, step / recipe.warmup), loss_at, calibrated)
    if closest is not None and closest[1] != steps:
        log(f"base: no check had every skill in {recipe.base_band}; keeping step {closest[1]} (miss {closest[0]:.2f})")
        model.load_state_dict(closest[2])
        steps = closest[1]
    return model.eval(), steps


def train_expert(base_dir: Path, out_dir: Path, arch: str, skill: str, seed: int, recipe: Recipe,
                 exclude: set[str], progress: bool) -> float:
    """LoRA on ``skill`` (+ KL(base‖expert) on the other formats if its plan anchors it), folded in and
    saved; returns seconds.

    Seeded by (seed, skill) only: the bytes do not depend on which process trains it or when.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from evomerge.zoo.tokenizer import hf_tokenizer

    start = time.perf_counter()
    plan = recipe.experts[skill]
    hf_logging.disable_progress_bar()  # per-load bars from four processes drown the build's progress lines
    with fixed_threads():
        model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).train()
        params = add_lora(model, arch, recipe.rank, recipe.alpha, seed=seed * 1000 + EXPERT_SKILLS.index(skill))
        own = Sampler({skill: 1.0}, f"zoo-expert-{seed}-{skill}", exclude)
        loss_at = _own_loss(model, own, recipe.batch)
        if plan.kl > 0:
            reference = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).eval()
            others = Sampler({f: 1.0 for f in FORMATS if f != skill}, f"zoo-anchor-{seed}-{skill}", exclude)
            loss_at = _anchored_loss(model, reference, own, others, recipe.batch - recipe.kl_rows, recipe.kl_rows,
                                     plan.kl)

        def report(step: int, loss: float) -> bool:
            if progress and step % 100 == 0:
                print(f"expert {skill} step {step}/{plan.steps}: loss {loss:.3f}", flush=True)
            return False

        def cosine(step: int) -> float:
            return plan.lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / plan.steps))

        optimize(params, plan.steps, cosine, loss_at, report)
        fold_lora(model)
        model.eval().save_pretrained(out_dir)
        hf_tokenizer().save_pretrained(out_dir)
    return time.perf_counter() - start


def _own_loss(model: nn.Module, own: Sampler, rows: int) -> Callable[[int], Tensor]:
    """Cross-entropy on the expert's own skill only: nothing holds the other formats in place."""

    def loss_at(step: int) -> Tensor:
        ids, labels = batch(own.items(rows))
        return cross_entropy(model(ids).logits, labels)

    return loss_at


def _anchored_loss(model: nn.Module, reference: nn.Module, own: Sampler, others: Sampler, n_own: int, n_anchor: int,
                   kl_weight: float) -> Callable[[int], Tensor]:
    """Own-skill cross-entropy on ``n_own`` rows + ``kl_weight`` · KL(base‖expert) on the answers of
    ``n_anchor`` rows of the other formats."""

    def loss_at(step: int) -> Tensor:
        ids, labels = batch(own.items(n_own) + others.items(n_anchor))
        logits = model(ids).logits
        anchor = labels[n_own:] != IGNORE
        with torch.no_grad():
            target = F.log_softmax(reference(ids[n_own:]).logits[anchor], -1)
        kl = F.kl_div(F.log_softmax(logits[n_own:][anchor], -1), target, log_target=True, reduction="batchmean")
        return cross_entropy(logits[:n_own], labels[:n_own]) + kl_weight * kl

    return loss_at


def worker_pool(processes: int) -> ProcessPoolExecutor:
    """Worker processes of one thread each, for the experts and the check's grid.

    Spawned, not forked: a fork of a process that already ran torch ops can inherit its thread
    pool's locks; a spawned child imports torch afresh (a few seconds, once per process).
    """
    return ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn"),
                               initializer=torch.set_num_threads, initargs=(1,))


def train_experts(base_dir: Path, out_dirs: dict[str, Path], arch: str, seed: int, recipe: Recipe,
                  exclude: set[str], progress: bool, pool: Executor) -> dict[str, float]:
    """All experts, each a job on ``pool``; returns seconds per expert."""
    jobs = {skill: pool.submit(train_expert, base_dir, out, arch, skill, seed, recipe, exclude, progress)
            for skill, out in out_dirs.items()}
    return {skill: job.result() for skill, job in jobs.items()}
