"""What lm-eval's task index says about a task, read without building it: output type, metrics, filters.

A config is checked before a run folder exists, and building a task loads its dataset; the index
holds each task's YAML config (includes resolved), which names everything a config may refer to.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from evomerge.errors import EvomergeError
from evomerge.scoring.lmeval import task_config

# lm-eval's own tasks of the well-known leaderboards: they score on the benchmarks' test sets, so a search that
# optimizes on them reports a test score it was fitted to (names ending in _train are training splits)
BENCHMARK_PREFIXES = ("mmlu", "hendrycks", "agieval", "gsm8k", "hellaswag", "winogrande", "arc_", "ai2_arc",
                      "truthfulqa", "bigbench", "piqa", "openbookqa", "leaderboard", "bbh", "ifeval", "gpqa", "musr")


def is_benchmark_test_set(task: str) -> bool:
    """An lm-eval task of a well-known benchmark, scored on its test set."""
    return task.startswith(BENCHMARK_PREFIXES) and not task.endswith("_train")


@dataclass(frozen=True)
class TaskInfo:
    name: str
    output_type: str
    metrics: tuple[str, ...]  # in metric_list order: the first is the primary metric
    filters: tuple[str, ...]  # in filter_list order; ("none",) for a task without filters


def task_manager(task_path: str | Path | None) -> Any:
    """lm-eval's TaskManager over a local folder of task YAMLs (lm-eval's own tasks when None)."""
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if task_path is not None and not Path(task_path).is_dir():
        raise EvomergeError(f"task folder not found: {task_path}")
    return TaskManager(include_path=str(task_path) if task_path else None, include_defaults=task_path is None)


def describe_tasks(names: Sequence[str], task_path: str | Path | None, manager: Any = None) -> dict[str, TaskInfo]:
    """TaskInfo per name; an unknown name, or a group where one task is needed, is a one-line error."""
    manager = manager or task_manager(task_path)
    return {name: _describe(manager, name, task_path) for name in dict.fromkeys(names)}


def _describe(manager: Any, name: str, task_path: str | Path | None) -> TaskInfo:
    from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

    entry = manager.task_index.get(name)
    if entry is None:
        where = f"in {task_path}" if task_path else "among lm-eval's tasks"
        raise EvomergeError(f"unknown lm-eval task '{name}' {where}; check the task names and scoring.task_path")
    if str(getattr(entry.kind, "name", entry.kind)).upper() not in ("TASK", "PY_TASK"):
        raise EvomergeError(f"'{name}' is an lm-eval group or tag, not one task: name one of its tasks")
    cfg = task_config(manager, entry)
    output_type = cfg.get("output_type", "generate_until")
    metric_list = cfg.get("metric_list") or [{"metric": m} for m in DEFAULT_METRIC_REGISTRY.get(output_type, [])]
    filters = tuple(f["name"] for f in cfg.get("filter_list") or []) or ("none",)
    return TaskInfo(name, output_type, tuple(str(m["metric"]) for m in metric_list), filters)
