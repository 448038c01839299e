"""Hostile-input fixtures: a private copy of a tiny model family, a finished run over it, the CLI's refusal, and
a digest of every input tree (what "no input byte changed" compares)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Callable

import pytest

from evomerge.config.search import SearchConfig, load_config
from evomerge.genome.space import GenomeSpace
from evomerge.run.log import RunLog
from evomerge.run.records import CandidateRecord
from evomerge.scoring.objectives import oriented
from evomerge.scoring.result import TaskScore
from evomerge.sources.pool import fingerprint

from .hostile_files import assert_refused, digest

TASKS = ("tiny_rev", "tiny_dup")


@pytest.fixture
def family(tmp_path: Path, scored_family: dict[str, Path]) -> dict[str, Path]:
    """base, a, b and the task folder, copied for this test: a command that wrongly writes them harms only the copy."""
    root = tmp_path / "models"
    return {name: shutil.copytree(scored_family[name], root / name) for name in ("base", "a", "b", "tasks")}


def write_config(folder: Path, family: dict[str, Path], **overrides: object) -> Path:
    """A search config over ``family`` (two tiny tasks); ``overrides`` replace top-level fields."""
    import yaml

    data = {
        "name": "hostile", "seed": 0,
        "sources": {"base": str(family["base"]), "models": [str(family["a"]), str(family["b"])]},
        "genome": {"methods": ["task_arithmetic"]},
        "scoring": {"task_path": str(family["tasks"]), "batch_size": 16},
        "objectives": [{"task": t, "heldout_task": f"{t}_heldout"} for t in TASKS],
        "strategy": {"name": "random"}, "budget": {"max_evals": 6},
        **overrides,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fill_run(root: Path, cfg: SearchConfig, n: int = 6) -> RunLog:
    """A run folder whose log holds ``n`` candidates with made-up scores, as the driver writes them."""
    run = RunLog.create(root, cfg, {str(p): fingerprint(p) for p in cfg.model_folders})
    space = GenomeSpace.for_config(cfg)
    rng = random.Random(0)
    for i in range(n):
        x = tuple(rng.random() for _ in range(space.dim))
        scores = {t: TaskScore(t, "acc", "none", {"acc": True}, {"acc,none": v}, {"acc,none": (v,) * 4})
                  for t, v in zip(TASKS, x, strict=False)}  # x has more genes than tasks
        run.append(CandidateRecord(i, space.key(x), x, (), "random", 0, scores, None, oriented(cfg.objectives, scores),
                                   None, 0.01, 0.02, "fake"))
    return run


@pytest.fixture
def config_file(tmp_path: Path, family: dict[str, Path]) -> Callable[..., Path]:
    """``config_file(**overrides)``: a search config over this test's family, in its own folder."""
    return lambda **overrides: write_config(tmp_path / "cfg", family, **overrides)


@pytest.fixture
def run_dir(tmp_path: Path, family: dict[str, Path]) -> Path:
    """A stopped run (6 candidates) over this test's family."""
    return fill_run(tmp_path / "run", load_config(write_config(tmp_path / "cfg", family))).root


@pytest.fixture
def snapshot() -> Callable[..., dict[str, str]]:
    """``digest``, for tests that compare input trees themselves."""
    return digest


Refused = Callable[..., str]


@pytest.fixture
def refused(capsys: pytest.CaptureFixture[str]) -> Refused:
    """``refused(argv, fragment, *inputs)``: the command exits 2 with one line holding ``fragment``, no traceback,
    and leaves every input tree byte for byte as it was; returns the line."""

    def check(argv: list[str], fragment: str, *inputs: Path) -> str:
        return assert_refused(argv, capsys, fragment, *inputs)

    return check
