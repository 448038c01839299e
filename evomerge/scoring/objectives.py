"""Reading objectives off score records: which task and metric, which direction, oriented values.

A score record (what a worker returns, per task) holds every metric, each metric's direction,
and the primary metric's per-item values. This module is the one place that turns records into
objective values, for the search (oriented: higher is better) and for reports (raw).
"""

from __future__ import annotations

from typing import Any, Sequence

from evomerge.run.config import Objective
from evomerge.scoring.result import TaskScore, result_key

SPLITS = ("calibration", "heldout")
WORST = -1e300  # oriented value of a failed candidate: below any real score, finite so sums and means stay finite


def task_of(objective: Objective, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return objective.task if split == "calibration" else (objective.heldout_task or objective.task)


def metric_of(objective: Objective, record: dict[str, Any]) -> str:
    return objective.metric or record["metric"]


def value_of(objective: Objective, record: dict[str, Any]) -> float:
    """The objective's metric under the task's primary filter."""
    score = TaskScore.from_json(record)
    return float(score.metrics[score.key(objective.metric)])


def higher_is_better(objective: Objective, record: dict[str, Any]) -> bool:
    """The config's direction, else lm-eval's for the objective's metric."""
    if objective.direction is not None:
        return objective.direction == "max"
    return bool(record["higher_is_better"][metric_of(objective, record)])


def raw_values(objectives: Sequence[Objective], scores: dict[str, Any] | None, split: str) -> tuple[float, ...] | None:
    """The objectives' metric values as measured (not oriented); None for a failed evaluation."""
    if scores is None:
        return None
    return tuple(value_of(o, scores[task_of(o, split)]) for o in objectives)


def directions(objectives: Sequence[Objective], scores: dict[str, Any] | None, split: str = "calibration") -> tuple[bool, ...] | None:
    """Per objective, whether higher is better."""
    if scores is None:
        return None
    return tuple(higher_is_better(o, scores[task_of(o, split)]) for o in objectives)


def oriented(objectives: Sequence[Objective], scores: dict[str, Any] | None) -> tuple[float, ...]:
    """Calibration values oriented so that higher is better; WORST for a failed candidate."""
    values, highs = raw_values(objectives, scores, "calibration"), directions(objectives, scores)
    if values is None or highs is None:
        return tuple(WORST for _ in objectives)
    return tuple(v if h else -v for v, h in zip(values, highs))


def per_item(objectives: Sequence[Objective], scores: dict[str, Any] | None, sizes: Sequence[int]) -> tuple[float, ...]:
    """All objectives' per-item scores of the primary metric, concatenated; a failure solves nothing.

    Per-item values are those of each task's primary metric (for the zoo: 0/1 exact match), flipped
    to 1 − v where the objective is minimized.
    """
    if scores is None:
        return tuple(0.0 for _ in range(sum(sizes)))
    items: list[float] = []
    for o in objectives:
        record = scores[o.task]
        flip = not bool(record["higher_is_better"][record["metric"]]) if o.direction is None else o.direction == "min"
        items.extend(1.0 - v if flip else v for v in record["per_item"][result_key(record["metric"], record["filter"])])
    return tuple(items)
