"""A minimal valid search config over tiny_family (no tasks are run by these fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.run.config import Objective, SearchConfig


@pytest.fixture
def tiny_config(tiny_family: dict[str, Path]) -> SearchConfig:
    return SearchConfig(
        name="tiny", base=tiny_family["base"], models=(tiny_family["a"], tiny_family["b"]),
        objectives=(Objective(task="t1"), Objective(task="t2")), max_evals=5,
    )
