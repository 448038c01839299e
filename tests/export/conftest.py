"""Synthetic runs for the export tests: tiny models (scored_family: with tokenizers), a fake executor with scores made
from the recipe.

The fake executor stands in for a worker (no lm-eval, no model): a candidate's score on objective
j grows with its mean weight on source j and shrinks with the others', so each source alone is the
expert of "its" task, and held-out scores are calibration scores times 0.9. It counts its jobs, so
tests can check that a cached result is never scored again.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest

from evomerge.config.search import BudgetConfig, GenomeConfig, ObjectiveConfig, SearchConfig, SourcesConfig
from evomerge.execution.executor import Executor, Job, JobResult
from evomerge.execution.worker import Outcome, WorkerSpec
from evomerge.export.evaluator import Request
from evomerge.genome.space import GenomeSpace
from evomerge.recipes.recipe import Recipe
from evomerge.run.log import RunLog
from evomerge.run.records import CandidateRecord
from evomerge.scoring.objectives import oriented
from evomerge.scoring.result import TaskScore
from evomerge.sources.pool import fingerprint

TASKS = ("t0", "t1")


def fake_scores(recipe: Recipe, tasks: tuple[str, ...], scale: float = 1.0) -> dict[str, TaskScore]:
    specs = [recipe.default, *recipe.groups.values()]
    even = (1.0 / len(recipe.sources),) * len(recipe.sources)  # a method without weights (regmean): as the soup
    weights = [sum(s.source_params.get("weight", even)[k] for s in specs) / len(specs)
               for k in range(len(recipe.sources))]
    out = {}
    for j, task in enumerate(tasks):
        own = min(weights[j], 1.0)
        others = sum(w for k, w in enumerate(weights) if k != j)
        value = scale * max(0.0, min(1.0, 0.25 + 0.6 * own - 0.2 * others))
        out[task] = TaskScore(task, "acc", "none", {"acc": True}, {"acc,none": value}, {"acc,none": (value,) * 4})
    return out


class FakeExecutor(Executor):
    jobs: list[Job] = []  # every job of every instance, for assertions

    def __init__(self, spec: WorkerSpec):
        self.spec = spec
        self.queue: list[Job] = []

    @property
    def n_workers(self) -> int:
        return 1

    def submit(self, job: Job) -> None:
        self.queue.append(job)
        FakeExecutor.jobs.append(job)

    def next_result(self) -> JobResult:
        job = self.queue.pop(0)
        tasks = self.spec.calibration_tasks if job.split == "calibration" else self.spec.heldout_tasks
        return JobResult(job, Outcome(fake_scores(job.recipe, tasks, 1.0 if job.split == "calibration" else 0.9),
                                      worker="fake"))


class Serial:
    """An ``Evaluate`` of a function ``score(recipe, split, what, items)`` that scores one request at a time."""

    def __init__(self, score: Callable[..., Outcome]):
        self.score = score

    def many(self, requests: Sequence[Request]) -> list[Outcome]:
        return [self.score(r.recipe, r.split, r.what, r.items) for r in requests]


@pytest.fixture
def fake_executor() -> type[FakeExecutor]:
    FakeExecutor.jobs = []
    return FakeExecutor


def export_config(family: dict[str, Path], **kw: Any) -> SearchConfig:
    defaults: dict[str, Any] = dict(
        name="tiny-export", sources=SourcesConfig(family["base"], (family["a"], family["b"])),
        objectives=tuple(ObjectiveConfig(task=t, heldout_task=f"{t}_heldout") for t in TASKS),
        genome=GenomeConfig(methods=("task_arithmetic",)), budget=BudgetConfig(max_evals=12), seed=3,
    )
    defaults.update(kw)
    return SearchConfig(**defaults)


def synthetic_run(root: Path, cfg: SearchConfig, n: int = 12, *, seed: int = 0, fail: tuple[int, ...] = ()) -> RunLog:
    """A run folder whose log holds ``n`` candidates scored by the fake scorer, as the driver writes them."""
    run = RunLog.create(root, cfg, {str(p): fingerprint(p) for p in cfg.model_folders})
    space = GenomeSpace.for_config(cfg)
    rng = random.Random(seed)
    for i in range(n):
        x = tuple(rng.random() for _ in range(space.dim))
        scores = None if i in fail else fake_scores(space.to_recipe(x), TASKS)
        run.append(CandidateRecord(i, space.key(x), x, (), "random", i // 4, scores, "boom" if i in fail else None,
                                   oriented(cfg.objectives, scores), None, 0.01, 0.02, "fake"))
    return run


@pytest.fixture
def tiny_run(tmp_path: Path, scored_family: dict[str, Path]) -> RunLog:
    """A run over models with tokenizers, so that exports pass their load check."""
    return synthetic_run(tmp_path / "run", export_config(scored_family), fail=(5,))
