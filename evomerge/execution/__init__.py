"""Where candidates run: workers (materialize + score) behind a steady-state executor."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import SearchConfig
from evomerge.execution.executor import Executor, Job, JobResult, LocalExecutor
from evomerge.execution.worker import Outcome, Worker, WorkerSpec

__all__ = ["Executor", "Job", "JobResult", "LocalExecutor", "Outcome", "Worker", "WorkerSpec", "make_executor"]


def make_executor(cfg: SearchConfig, spec: WorkerSpec, run_root: Path) -> Executor:
    """The executor the config asks for; only the place candidates run differs between backends."""
    e = cfg.execution
    if e.backend == "ray":
        from evomerge.execution.ray_executor import RayExecutor  # imports ray: only when asked for

        return RayExecutor(spec, workers=e.workers, gpus_per_worker=e.gpus_per_worker, address=e.ray_address,
                           temp_root=run_root)
    return LocalExecutor(spec)
