"""Executors run jobs on workers, steady state: submit whenever a slot is free, take results as they finish.

The driver never waits at a generation barrier: it submits up to its in-flight depth and
receives whichever result is ready first. Results may finish in any order; the driver restores
ask order itself.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Mapping

from evomerge.execution.worker import Outcome, Worker, WorkerSpec
from evomerge.recipes.recipe import Recipe


@dataclass(frozen=True)
class Job:
    index: int  # position in ask order (or a negative id for baselines / finalists)
    recipe: Recipe
    split: str = "calibration"
    items: Mapping[str, tuple[int, ...]] | None = None  # a chunk: task -> document positions; None: every item


@dataclass(frozen=True)
class JobResult:
    job: Job
    outcome: Outcome


class Executor(ABC):
    @property
    @abstractmethod
    def n_workers(self) -> int: ...

    @abstractmethod
    def submit(self, job: Job) -> None: ...

    @abstractmethod
    def next_result(self) -> JobResult:
        """Block until some submitted job has finished and return it."""

    @property
    def restarted(self) -> int:
        """Worker deaths seen so far, each followed by a restart (the session record logs it); 0 where workers
        cannot die apart from the driver."""
        return 0

    def utilization(self) -> dict[str, float]:
        """Busy time / wall time per worker since the executor started."""
        return {}

    def close(self) -> None:  # noqa: B027 (a no-op default, not abstract: LocalExecutor keeps it)
        """Release workers (and any cluster the executor started)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """One in-process worker; a job runs when its result is asked for."""

    def __init__(self, spec: WorkerSpec):
        self.worker = Worker(spec, name="local-0")
        self.queue: deque[Job] = deque()
        self.started, self.busy = time.perf_counter(), 0.0

    @property
    def n_workers(self) -> int:
        return 1

    def submit(self, job: Job) -> None:
        self.queue.append(job)

    def next_result(self) -> JobResult:
        """Runs a queued job, first one of the recipe the worker holds (no merge), else the oldest."""
        job = next((j for j in self.queue if j.recipe == self.worker.merged), self.queue[0])
        self.queue.remove(job)
        t0 = time.perf_counter()
        try:
            outcome = self.worker.evaluate(job.recipe, job.split, job.items)
        finally:
            self.busy += time.perf_counter() - t0
        return JobResult(job, outcome)

    def utilization(self) -> dict[str, float]:
        wall = time.perf_counter() - self.started
        return {self.worker.name: self.busy / wall if wall > 0 else 0.0}
