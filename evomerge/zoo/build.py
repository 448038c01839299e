"""Build (or reuse) a zoo folder: data and tasks, base, experts, quality check, manifest — in that order.

Layout (paths in zoo.json are relative to the zoo folder)::

    zoo.json                          seed, arch, builder version, paths, build seconds; quality: the
                                      held-out and calibration tables, the fixed recipes chosen on
                                      calibration with both scores, the conditions (and, once
                                      scripts/zoo_ceiling.py ran, the ceiling)
    models/base, models/<skill>       HF folders: config, safetensors, generation config, tokenizer
    data/<skill>_{calibration,heldout}.jsonl
    tasks/zoo_<skill>.yaml, tasks/zoo_<skill>_heldout.yaml   lm-eval tasks (absolute data paths)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from evomerge.config.search import ObjectiveConfig, ScoringConfig
from evomerge.env import run_reproducibly
from evomerge.errors import EvomergeError
from evomerge.files import exclusive, replace_folder, write_text_atomic
from evomerge.sources.writer import check_outside
from evomerge.zoo.check import ModelFamily, check_fixed, conditions, format_table, require, verdict_line
from evomerge.zoo.model import check_arch
from evomerge.zoo.skills import EXPERT_SKILLS, Item, eval_sets, letters_of
from evomerge.zoo.tasks import write_loglikelihood_task, write_skill_tasks
from evomerge.zoo.tokenizer import hf_tokenizer
from evomerge.zoo.train import Recipe, fixed_threads, train_base, train_experts, worker_pool

T = TypeVar("T")

BUILDER_VERSION = 4  # bump when a change alters the bytes: cached zoos are then rebuilt (4: evomerge.env.REPRODUCIBLE)
# Calibration items are scored for every candidate of a search and choose the fixed recipes' settings;
# at 256 per skill one item is 0.4 points. Held-out items re-score finalists and check the zoo.
N_CALIBRATION, N_HELDOUT = 256, 512


@dataclass(frozen=True)
class SkillFiles:
    task: str  # lm-eval task on the calibration set
    heldout_task: str
    calibration: Path
    heldout: Path


@dataclass(frozen=True)
class BuiltFamily:
    """What a built family folder holds (paths resolved), as both zoos' manifests record it."""

    root: Path
    seed: int
    base: Path
    experts: dict[str, Path]
    skills: dict[str, SkillFiles]
    task_dir: Path
    quality: dict[str, Any]  # {"table": row -> skill -> acc, "conditions": name -> {holds, evidence}, ...}

    def family(self) -> ModelFamily:
        """The family as the checks see it: each skill's loglikelihood tasks, scored on ``acc``."""
        return zoo_family(self.base, self.experts, self.task_dir,
                          {s: (f.task, f.heldout_task) for s, f in self.skills.items()}, self.seed)


@dataclass(frozen=True)
class Zoo(BuiltFamily):
    arch: str


def zoo_family(base: Path, experts: dict[str, Path], task_dir: Path, tasks: dict[str, tuple[str, str]], seed: int,
               items: int | None = None) -> ModelFamily:
    """A tiny-zoo family: ``tasks`` maps each skill to its calibration and held-out task in ``task_dir``."""
    objectives = {s: ObjectiveConfig(task=cal, heldout_task=held, metric="acc") for s, (cal, held) in tasks.items()}
    return ModelFamily(base, experts, objectives, ScoringConfig(task_path=task_dir), seed=seed, items=items)


def read_manifest(root: Path, name: str, what: str, command: str) -> dict[str, Any]:
    """A family's manifest (``zoo.json``, ``smol.json``), or a one-line error saying how to build one."""
    if not (root / name).is_file():
        raise EvomergeError(f"no {what} in {root} ({name} missing): build one with '{command} {root}'")
    return json.loads((root / name).read_text())


def built_fields(root: Path, m: dict[str, Any]) -> dict[str, Any]:
    """``BuiltFamily``'s fields from a manifest, paths resolved against the family's folder."""
    skills = {s: SkillFiles(v["task"], v["heldout_task"], root / v["calibration"], root / v["heldout"])
              for s, v in m["skills"].items()}
    return {"root": root, "seed": m["seed"], "base": root / m["base"],
            "experts": {s: root / p for s, p in m["experts"].items()},
            "skills": skills, "task_dir": root / m["task_dir"], "quality": m["quality"]}


def load_zoo(root: str | Path) -> Zoo:
    root = Path(root).resolve()
    m = read_manifest(root, "zoo.json", "zoo", "evomerge zoo build")
    return Zoo(**built_fields(root, m), arch=m["arch"])


def build_zoo(out_dir: str | Path, *, seed: int = 0, arch: str = "llama", force: bool = False, progress: bool = True,
              steps: int | None = None) -> Zoo:
    """Build the zoo in ``out_dir``, or return the one there if it was built the same way.

    ``steps`` trains every model that many steps instead of the calibrated recipe: seconds-long
    builds for tests, whose conditions are reported but not enforced. A zoo built by the full recipe
    that misses condition (a) or (b) on held-out raises EvomergeError naming it, rather than ship a
    zoo on which a search cannot show anything; (c) is left to ``scripts/zoo_ceiling.py``.
    """
    check_arch(arch)
    recipe = Recipe.quick(steps) if steps else Recipe()

    def build(tmp: Path, final: Path) -> dict[str, Any]:
        # Training and check in a child process whose math libraries compute alike on every AVX2 CPU.
        m = run_reproducibly(_build, tmp, final, seed, arch, recipe, progress)
        if steps is None:
            require(m["quality"]["conditions"], f"the zoo (seed {seed}, {arch})")
        return m

    key = {"builder_version": BUILDER_VERSION, "seed": seed, "arch": arch, "steps": steps}
    return cached_build(out_dir, "zoo.json", key, "zoo", build, load_zoo, force=force)


def cached_build(out_dir: str | Path, manifest: str, key: dict[str, Any], what: str,
                 build: Callable[[Path, Path], dict[str, Any]], load: Callable[[Path], T], *, force: bool = False) -> T:
    """A family folder built once per ``key`` (both zoos: the tiny one and SmolLM2).

    A folder whose ``manifest`` holds ``key`` is loaded, not rebuilt; a non-empty folder with no
    manifest is refused (it may hold a user's files). Otherwise ``build(tmp, out_dir)`` writes
    everything but the manifest's key into a temporary sibling folder and returns the manifest;
    only a finished build replaces ``out_dir``, so a failed or interrupted one leaves it as it was.
    Processes asking for the same folder take turns (a lock file beside it): one builds, the others
    wait, then load what it built.
    """
    out_dir = Path(out_dir).resolve()
    check_outside(out_dir, [])
    with exclusive(build_lock(out_dir)):
        return _cached_build(out_dir, manifest, key, what, build, load, force=force)


def build_lock(out_dir: Path) -> Path:
    """The lock file beside a family folder that its builders take turns at (created with its parent folder)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent / f".{out_dir.name}.lock"


def _cached_build(out_dir: Path, manifest: str, key: dict[str, Any], what: str,
                  build: Callable[[Path, Path], dict[str, Any]], load: Callable[[Path], T], *, force: bool) -> T:
    path = out_dir / manifest
    if path.is_file() and not force:
        if {k: json.loads(path.read_text()).get(k) for k in key} == key:
            return load(out_dir)
    elif out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise EvomergeError(f"{out_dir} is not empty and holds no {what}: choose an empty folder or pass --force")
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        m = build(tmp, out_dir)
        (tmp / manifest).write_text(json.dumps({**key, **m}, indent=2) + "\n")
        replace_folder(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load(out_dir)


def _build(tmp: Path, final: Path, seed: int, arch: str, recipe: Recipe, progress: bool) -> dict[str, Any]:
    """Everything but the manifest's cache key, written under ``tmp``; task YAMLs point into ``final``."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    start = time.perf_counter()

    def log(line: str) -> None:
        if progress:
            print(line, flush=True)

    # Data: per skill, calibration and held-out items on distinct strings that no training batch uses.
    sets = eval_sets(seed, N_CALIBRATION, N_HELDOUT)
    exclude = letters_of(it for splits in sets.values() for items in splits.values() for it in items)
    skills = {}
    for skill, splits in sets.items():
        files = {split: Path("data") / f"{skill}_{split}.jsonl" for split in splits}
        for split, items in splits.items():
            write_jsonl(tmp / files[split], items)
        # Every task kind (loglikelihood, multiple choice, generation, rolling) per split; the YAMLs
        # hold the final absolute data paths, as lm-eval resolves them from wherever it runs.
        tasks = write_skill_tasks(skill, {split: final / f for split, f in files.items()},
                                  tmp / "tasks")["loglikelihood"]
        skills[skill] = {"task": tasks["calibration"], "heldout_task": tasks["heldout"],
                         "calibration": str(files["calibration"]), "heldout": str(files["heldout"])}

    # Base: pre-trained on the mixture until it half-knows every skill.
    with fixed_threads():
        base, base_steps = train_base(arch, seed, recipe, {s: v["calibration"] for s, v in sets.items()}, exclude, log)
        base.save_pretrained(tmp / "models" / "base")
        hf_tokenizer().save_pretrained(tmp / "models" / "base")
    log(f"base: step {base_steps}, {time.perf_counter() - start:.0f} s")

    # Experts, then the check's grid of fixed merges: shared out over worker processes, one thread each.
    experts = {skill: Path("models") / skill for skill in EXPERT_SKILLS}
    # The check scores lm-eval tasks over the data here (the zoo's own tasks point into the final folder).
    check = {s: (v["task"], v["heldout_task"]) for s, v in skills.items()}
    for v in skills.values():
        for split, name in (("calibration", v["task"]), ("heldout", v["heldout_task"])):
            write_loglikelihood_task(tmp / "check" / f"{name}.yaml", name, tmp / v[split])
    processes = min(len(experts), os.cpu_count() or 1)
    with worker_pool(processes) as pool:
        seconds = train_experts(tmp / "models" / "base", {s: tmp / p for s, p in experts.items()}, arch, seed, recipe,
                                exclude, progress, pool)
        log("experts: " + ", ".join(f"{s} {t:.0f} s" for s, t in seconds.items()))

        # Check: base, experts and the fixed recipes (chosen on calibration) on held-out; the conditions.
        family = zoo_family(tmp / "models" / "base", {s: tmp / p for s, p in experts.items()}, tmp / "check", check,
                            seed, recipe.check_items)
        with fixed_threads():
            q = check_fixed(family, lambdas=recipe.lambdas, densities=recipe.densities, pool=pool, parts=processes)
    shutil.rmtree(tmp / "check")
    verdicts = conditions(q)
    log(format_table(q["table"]))
    for name, (holds, evidence) in verdicts.items():
        log(verdict_line(name, holds, evidence))
    elapsed = time.perf_counter() - start
    log(f"zoo built in {elapsed:.0f} s")
    return {
        "base": "models/base", "experts": {s: str(p) for s, p in experts.items()}, "skills": skills,
        "task_dir": "tasks", "base_steps": base_steps, "build_seconds": round(elapsed, 1),
        # The machine's 1/5/15-minute load at the end: build seconds on a shared machine mean little without it.
        "build_load_average": [round(x, 2) for x in os.getloadavg()],
        "quality": {**q, "conditions": _as_json(verdicts)},
    }


def record_ceiling(root: str | Path, ceiling: dict[str, Any]) -> Zoo:
    """Add a ceiling search's result (``evomerge.zoo.ceiling``) to a zoo's manifest and judge the
    conditions again, (c) now included."""
    zoo = load_zoo(root)
    manifest = json.loads((zoo.root / "zoo.json").read_text())
    q = {k: v for k, v in manifest["quality"].items() if k != "conditions"} | {"ceiling": ceiling}
    manifest["quality"] = {**q, "conditions": _as_json(conditions(q))}
    rewrite_manifest(zoo.root / "zoo.json", manifest)
    return load_zoo(root)


def rewrite_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Replace a family's manifest: a reader sees the old one or the new one, never a part."""
    write_text_atomic(path, json.dumps(manifest, indent=2) + "\n")


def _as_json(verdicts: dict[str, tuple[bool | None, str]]) -> dict[str, dict[str, Any]]:
    return {name: {"holds": holds, "evidence": evidence} for name, (holds, evidence) in verdicts.items()}


def write_jsonl(path: Path, items: list[Item]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(item) + "\n" for item in items))


