"""A minimal valid search config over tiny_family (no tasks are run by these fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.config.search import BudgetConfig, ObjectiveConfig, SearchConfig, SourcesConfig


@pytest.fixture
def tiny_config(tiny_family: dict[str, Path]) -> SearchConfig:
    return SearchConfig(
        name="tiny", sources=SourcesConfig(tiny_family["base"], (tiny_family["a"], tiny_family["b"])),
        objectives=(ObjectiveConfig(task="t1"), ObjectiveConfig(task="t2")), budget=BudgetConfig(max_evals=5),
    )


def write_search_config(folder: Path, family: dict[str, Path], **overrides) -> Path:
    """A search config over scored_family (tiny models, two tiny tasks) in ``folder``."""
    import yaml

    data = {
        "name": "tiny-search", "seed": 0,
        "sources": {"base": str(family["base"]), "models": [str(family["a"]), str(family["b"])]},
        "genome": {"methods": ["ties"]},
        "scoring": {"task_path": str(family["tasks"]), "batch_size": 16},
        "objectives": [{"task": "tiny_rev", "heldout_task": "tiny_rev_heldout", "metric": "perplexity"},
                       {"task": "tiny_dup", "heldout_task": "tiny_dup_heldout", "metric": "perplexity"}],
        "strategy": {"name": "cmaes"}, "budget": {"max_evals": 10}, "execution": {"in_flight": 3},
    }
    for key, value in overrides.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def search_config():
    """The config writer, as a fixture (test modules are not importable from each other)."""
    return write_search_config
