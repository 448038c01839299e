"""Reading objectives off task scores: which task, metric and filter, which direction, oriented values.

This module is the one place that turns scores into objective values: for the search (oriented,
higher is better, and per item — what natural niches compete on) on the objective's search metric,
and for reports (raw) on its reported metric; always under the filter the objective names, or the
task's primary metric and filter where it names none.
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


def metric_name(objective: ObjectiveConfig, score: TaskScore, search: bool = False) -> str:
    """The reported metric, or (``search``) the one the strategy optimizes."""
    return (search and objective.search_metric) or objective.metric or score.metric


def higher_is_better(objective: ObjectiveConfig, score: TaskScore, search: bool = False) -> bool:
    """The config's direction for the reported metric, else lm-eval's for the metric."""
    if objective.direction is not None and metric_name(objective, score, search) == metric_name(objective, score):
        return objective.direction == "max"
    return bool(score.higher_is_better.get(metric_name(objective, score, search), True))


def value(objective: ObjectiveConfig, score: TaskScore, search: bool = False) -> float:
    """The objective's (reported or search) metric under its filter, as measured."""
    return float(score.metrics[score.key(metric_name(objective, score, search), objective.filter)])


def raw_values(objectives: Sequence[ObjectiveConfig], scores: Scores | None, split: str) -> tuple[float, ...] | None:
    """The objectives' metric values as measured (not oriented); None for a failed evaluation."""
    if scores is None:
        return None
    return tuple(value(o, score_of(o, scores, split)) for o in objectives)


def directions(objectives: Sequence[ObjectiveConfig], scores: Scores | None,
               split: str = "calibration") -> tuple[bool, ...] | None:
    """Per objective, whether higher is better."""
    if scores is None:
        return None
    return tuple(higher_is_better(o, score_of(o, scores, split)) for o in objectives)


def oriented(objectives: Sequence[ObjectiveConfig], scores: Scores | None) -> tuple[float, ...]:
    """What the strategy sees: the search metrics on calibration, oriented so that higher is better;
    WORST for a failed candidate."""
    if scores is None:
        return tuple(WORST for _ in objectives)
    out = []
    for o in objectives:
        score = score_of(o, scores, "calibration")
        v = value(o, score, search=True)
        out.append(v if higher_is_better(o, score, search=True) else -v)
    return tuple(out)


def fitness(objectives: Sequence[ObjectiveConfig], values: Sequence[float]) -> float:
    """The scalarized fitness of oriented ``values``: their mean weighted by the objectives' weights."""
    weights = [o.weight for o in objectives]
    return sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)


def nonfinite(objectives: Sequence[ObjectiveConfig], scores: Scores) -> str | None:
    """Why these calibration scores cannot be optimized on (a search metric is NaN or infinite), or None."""
    for j, o in enumerate(objectives):
        score = score_of(o, scores, "calibration")
        v = value(o, score, search=True)
        if not math.isfinite(v):
            return f"objective {j} ({o.task} {metric_name(o, score, search=True)}) is {v}"
    return None


def item_scores(objective: ObjectiveConfig, score: TaskScore) -> tuple[float, ...]:
    """The search metric's per-item values as numbers in [0, 1], higher is better (what natural niches compare)."""
    metric = metric_name(objective, score, search=True)
    key = score.key(metric, objective.filter)
    if key not in score.per_item:
        raise EvomergeError(f"objective {objective.task}: metric '{key}' has no per-item numbers; natural niches needs "
                            "them: choose a metric such as acc, exact_match or perplexity")
    if metric in LOG_LIKELIHOOD_METRICS:
        return tuple(math.exp(min(v, 0.0)) for v in score.per_item[key])
    up = higher_is_better(objective, score, search=True)
    return tuple(v if up else 1.0 - v for v in score.per_item[key])


def per_item(objectives: Sequence[ObjectiveConfig], scores: Scores | None, sizes: Sequence[int]) -> tuple[float, ...]:
    """All objectives' calibration per-item scores, concatenated; a failure solves nothing (zeros)."""
    if scores is None:
        return tuple(0.0 for _ in range(sum(sizes)))
    return tuple(v for o in objectives for v in item_scores(o, score_of(o, scores, "calibration")))
