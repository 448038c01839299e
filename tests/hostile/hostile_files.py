"""Helpers of the hostile-file tests (safetensors, config.json, YAML, card): private copies of the tiny family, configs
and recipes over them, and the CLI's refusal checked byte for byte against every input."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from evomerge.cli import main
from evomerge.run.log import LOCK


def copy_family(root: Path, scored_family: dict[str, Path]) -> dict[str, Path]:
    """base, a, b (with tokenizers) and the task folder, copied: a test damages only its own copy."""
    return {name: shutil.copytree(scored_family[name], root / name) for name in ("base", "a", "b", "tasks")}


def search_yaml(folder: Path, fam: dict[str, Path], **sources: Any) -> Path:
    """A valid search config over ``fam``; ``sources`` replace fields of its sources section."""
    data = {
        "name": "hostile-files", "seed": 0,
        "sources": {"base": str(fam["base"]), "models": [str(fam["a"]), str(fam["b"])], **sources},
        "genome": {"methods": ["task_arithmetic"]},
        "scoring": {"task_path": str(fam["tasks"])},
        "objectives": [{"task": "tiny_rev", "heldout_task": "tiny_rev_heldout", "metric": "acc"}],
        "strategy": {"name": "random"}, "budget": {"max_evals": 2},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def recipe_yaml(folder: Path, base: Path, sources: list[Path]) -> Path:
    """A task-arithmetic recipe merging ``sources`` into ``base``."""
    data = {"method": "task_arithmetic", "base": str(base),
            "sources": [{"model": str(s), "parameters": {"weight": 0.5}} for s in sources]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def digest(*roots: Path) -> dict[str, str]:
    """Every path under ``roots`` (a root may be a file): a file's SHA-256, a link's target, or 'dir'. A run's
    session.lock is left out: it holds the pid of whoever last took the lock, not run data."""
    out = {}
    for root in map(Path, roots):
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            if path.name == LOCK:
                continue
            out[str(path)] = ("-> " + os.readlink(path) if path.is_symlink() else
                              hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else
                              "dir" if path.is_dir() else "absent")
    return out


def assert_refused(argv: list[str], capsys: pytest.CaptureFixture[str], fragment: str, *inputs: Path) -> str:
    """The command exits 2 with one line on stderr holding ``fragment``, no traceback, and changes no byte of
    ``inputs``; returns the line."""
    before = digest(*inputs)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("evomerge: note:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert digest(*inputs) == before, f"{argv} changed its inputs"
    return lines[0]
