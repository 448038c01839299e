"""Reading objectives off task scores: which task, metric and filter, which direction, oriented values.

This module is the one place that turns scores into objective values: for the search (oriented,
higher is better), for reports (raw), and per item (what natural niches compete on), always for the
metric and filter the objective names — or the task's primary ones where it names none.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

from evomerge.config.search import ObjectiveConfig
from evomerge.errors import EvomergeError
from evomerge.scoring.result import TaskScore

Scores = Mapping[str, TaskScore]
SPLITS = ("calibration", "heldout")
WORST = -1e300  # oriented value of a failed candidate: below any real score, finite so sums and means stay finite
# Metrics whose per-document value is the answer's log-likelihood (lm-eval's ``perplexity`` aggregates
# exp(-mean)); per item they count as the answer's probability, exp(ll), a number in [0, 1].
LOG_LIKELIHOOD_METRICS = ("perplexity",)


def score_of(objective: ObjectiveConfig, scores: Scores, split: str) -> TaskScore:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return scores[objective.task_for(split)]


def metric_name(objective: ObjectiveConfig, score: TaskScore) -> str:
    return objective.metric or score.metric


def higher_is_better(objective: ObjectiveConfig, score: TaskScore) -> bool:
    """The config's direction, else lm-eval's for the objective's metric."""
    if objective.direction is not None:
        return objective.direction == "max"
    return bool(score.higher_is_better.get(metric_name(objective, score), True))


def value(objective: ObjectiveConfig, score: TaskScore) -> float:
    """The objective's metric under its filter, as measured."""
    return float(score.metrics[score.key(objective.metric, objective.filter)])


def raw_values(objectives: Sequence[ObjectiveConfig], scores: Scores | None, split: str) -> tuple[float, ...] | None:
    """The objectives' metric values as measured (not oriented); None for a failed evaluation."""
    if scores is None:
        return None
    return tuple(value(o, score_of(o, scores, split)) for o in objectives)


def directions(objectives: Sequence[ObjectiveConfig], scores: Scores | None, split: str = "calibration") -> tuple[bool, ...] | None:
    """Per objective, whether higher is better."""
    if scores is None:
        return None
    return tuple(higher_is_better(o, score_of(o, scores, split)) for o in objectives)


def oriented(objectives: Sequence[ObjectiveConfig], scores: Scores | None) -> tuple[float, ...]:
    """Calibration values oriented so that higher is better; WORST for a failed candidate."""
    values, highs = raw_values(objectives, scores, "calibration"), directions(objectives, scores)
    if values is None or highs is None:
        return tuple(WORST for _ in objectives)
    return tuple(v if h else -v for v, h in zip(values, highs))


def nonfinite(objectives: Sequence[ObjectiveConfig], scores: Scores) -> str | None:
    """Why these calibration scores cannot be optimized on (an objective is NaN or infinite), or None."""
    for j, o in enumerate(objectives):
        v = value(o, score_of(o, scores, "calibration"))
        if not math.isfinite(v):
            return f"objective {j} ({o.task} {metric_name(o, score_of(o, scores, 'calibration'))}) is {v}"
    return None


def item_scores(objective: ObjectiveConfig, score: TaskScore) -> tuple[float, ...]:
    """The objective's per-item values as numbers in [0, 1], higher is better (what natural niches compare)."""
    key = score.key(objective.metric, objective.filter)
    if key not in score.per_item:
        raise EvomergeError(f"objective {objective.task}: metric '{key}' has no per-item numbers; natural niches needs "
                            "them: choose a metric such as acc, exact_match or perplexity")
    metric = metric_name(objective, score)
    if metric in LOG_LIKELIHOOD_METRICS:
        return tuple(math.exp(min(v, 0.0)) for v in score.per_item[key])
    up = higher_is_better(objective, score)
    return tuple(v if up else 1.0 - v for v in score.per_item[key])


def per_item(objectives: Sequence[ObjectiveConfig], scores: Scores | None, sizes: Sequence[int]) -> tuple[float, ...]:
    """All objectives' calibration per-item scores, concatenated; a failure solves nothing (zeros)."""
    if scores is None:
        return tuple(0.0 for _ in range(sum(sizes)))
    return tuple(v for o in objectives for v in item_scores(o, score_of(o, scores, "calibration")))
