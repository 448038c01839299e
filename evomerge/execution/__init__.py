"""Where candidates run: workers (materialize + score) behind a steady-state executor."""

from __future__ import annotations

from pathlib import Path

from evomerge.execution.executor import Executor, Job, JobResult, LocalExecutor
from evomerge.execution.worker import Outcome, Worker, WorkerSpec
from evomerge.run.config import SearchConfig

__all__ = ["Executor", "Job", "JobResult", "LocalExecutor", "Outcome", "Worker", "WorkerSpec", "make_executor"]


def make_executor(cfg: SearchConfig, spec: WorkerSpec, run_root: Path) -> Executor:
    """The executor the config asks for; only the place candidates run differs between backends."""
    if cfg.backend == "ray":
        from evomerge.execution.ray_executor import RayExecutor

        return RayExecutor(spec, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker, address=cfg.ray_address, temp_root=run_root)
    return LocalExecutor(spec)
