"""Training: a base that half-knows every skill, then LoRA experts anchored to it by KL (DESIGN.md §7).

Why this recipe: a base that already knows the skills makes indistinct experts; a base that knows
nothing makes large, overlapping, all-or-nothing task vectors. A half-competent base, and experts
that move it by a low-rank update while a KL term holds the other formats where the base had them,
gave nearly orthogonal task vectors that fixed merges partly keep and search can improve on.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evomerge.zoo.check import exact_match
from evomerge.zoo.model import add_lora, fold_lora, new_model
from evomerge.zoo.skills import EXPERT_SKILLS, FORMATS, IGNORE, Item, Sampler, batch

# Starting weights of the base mixture (DESIGN.md §7): the experts' skills lightly, copy and shift
# fully. Skills emerge abruptly and at seed-dependent steps, so the base calibrates them as it trains.
BASE_MIXTURE = {"rev": 0.2, "sort": 0.4, "up": 0.1, "dup": 0.1, "copy": 1.0, "shift": 1.0}


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
    expert_steps: int = 400
    expert_lr: float = 5e-3
    rank: int = 8
    alpha: float = 8.0
    kl_rows: int = 32  # rows of each expert batch that hold other formats, for the KL anchor

    @classmethod
    def quick(cls, steps: int) -> "Recipe":
        return cls(warmup=min(cls.warmup, steps), base_min_steps=steps, base_max_steps=steps, expert_steps=steps)


@contextmanager
def one_thread() -> Iterator[None]:
    """One thread (≈2× faster per step than two at this size) and deterministic kernels: same bytes."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


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
               log: Callable[[str], None]) -> tuple[nn.Module, int]:
    """Pre-train on the mixture until the base half-knows every skill; returns (model, steps)."""
    model = new_model(arch, seed).train()
    mixture = dict(BASE_MIXTURE)
    sampler = Sampler(mixture, f"zoo-base-{seed}", exclude)
    checks = {skill: batch(items) for skill, items in calibration.items()}
    low, high = recipe.base_band

    def loss_at(step: int) -> Tensor:
        ids, labels = batch(sampler.items(recipe.batch))
        return cross_entropy(model(ids).logits, labels)

    def calibrated(step: int, loss: float) -> bool:
        if step < recipe.base_min_steps or (step % recipe.check_every and step < recipe.base_max_steps):
            return False
        model.eval()
        acc = {skill: exact_match(model, *b).float().mean().item() for skill, b in checks.items()}
        model.train()
        log(f"base step {step}: loss {loss:.3f}, " + ", ".join(f"{s} {a:.2f}" for s, a in acc.items()))
        for skill, a in acc.items():
            mixture[skill] = min(1.0, max(0.01, mixture[skill] * (2.0 if a < low else 0.5 if a > high else 1.0)))
        sampler.weights = list(mixture.values())
        return all(low <= a <= high for a in acc.values())

    steps = optimize(list(model.parameters()), recipe.base_max_steps,
                     lambda step: recipe.base_lr * min(1.0, step / recipe.warmup), loss_at, calibrated)
    return model.eval(), steps


def train_expert(base_dir: Path, out_dir: Path, arch: str, skill: str, seed: int, recipe: Recipe,
                 exclude: set[str], progress: bool) -> float:
    """LoRA on ``skill`` + KL(base‖expert) on the other formats, folded in and saved; returns seconds.

    Seeded by (seed, skill) only: the bytes do not depend on which process trains it or when.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from evomerge.zoo.tokenizer import hf_tokenizer

    start = time.perf_counter()
    hf_logging.disable_progress_bar()  # per-load bars from four processes drown the build's progress lines
    with one_thread():
        reference = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).eval()
        model = AutoModelForCausalLM.from_pretrained(base_dir, local_files_only=True).train()
        params = add_lora(model, arch, recipe.rank, recipe.alpha, seed=seed * 1000 + EXPERT_SKILLS.index(skill))
        own = Sampler({skill: 1.0}, f"zoo-expert-{seed}-{skill}", exclude)
        others = Sampler({f: 1.0 for f in FORMATS if f != skill}, f"zoo-anchor-{seed}-{skill}", exclude)
        n_own = recipe.batch - recipe.kl_rows

        def loss_at(step: int) -> Tensor:
            ids, labels = batch(own.items(n_own) + others.items(recipe.kl_rows))
            logits = model(ids).logits
            anchor = labels[n_own:] != IGNORE
            with torch.no_grad():
                target = F.log_softmax(reference(ids[n_own:]).logits[anchor], -1)
            kl = F.kl_div(F.log_softmax(logits[n_own:][anchor], -1), target, log_target=True, reduction="batchmean")
            return cross_entropy(logits[:n_own], labels[:n_own]) + kl

        def report(step: int, loss: float) -> bool:
            if progress and step % 100 == 0:
                print(f"expert {skill} step {step}/{recipe.expert_steps}: loss {loss:.3f}", flush=True)
            return False

        def cosine(step: int) -> float:
            return recipe.expert_lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / recipe.expert_steps))

        optimize(params, recipe.expert_steps, cosine, loss_at, report)
        fold_lora(model)
        model.eval().save_pretrained(out_dir)
        hf_tokenizer().save_pretrained(out_dir)
    return time.perf_counter() - start


def train_experts(base_dir: Path, out_dirs: dict[str, Path], arch: str, seed: int, recipe: Recipe,
                  exclude: set[str], progress: bool, processes: int) -> dict[str, float]:
    """All experts, ``processes`` at a time, each process one thread; returns seconds per expert.

    Spawned, not forked: a fork of a process that already ran torch ops can inherit its thread
    pool's locks; a spawned child imports torch afresh (a few seconds, once per process).
    """
    with ProcessPoolExecutor(max_workers=processes, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                             initargs=(1,)) as pool:
        jobs = {skill: pool.submit(train_expert, base_dir, out, arch, skill, seed, recipe, exclude, progress)
                for skill, out in out_dirs.items()}
        return {skill: job.result() for skill, job in jobs.items()}
