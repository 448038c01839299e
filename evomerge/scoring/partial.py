"""Partial scores: a candidate's score on a prefix of each task's items, with its standard error.

Cheap fitness (docs/DESIGN.md §12) scores candidates in chunks of items. Every candidate reads each
task's items in one seeded order (``item_order``), cut into the same chunks (``chunk_bounds``), so two
candidates' partial scores cover the same items and compare by their per-item differences (paired:
candidates of one family pass and fail the same items, which cancels most of the variance).

A metric pools its per-item values as lm-eval aggregates them: the mean, or for a log-likelihood metric
(``perplexity``) exp(−mean). Only such metrics have a partial score (``POOLED_AGGREGATIONS``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from evomerge.scoring.objectives import LOG_LIKELIHOOD_METRICS
from evomerge.scoring.result import TaskScore

ORDER_STREAM = 20  # the seed stream of item orders (issue 20), apart from every other use of the run's seed
POOLED_AGGREGATIONS = ("mean", "perplexity")  # lm-eval aggregations a prefix of items estimates
LOG_LIKELIHOOD_POOL = "perplexity"  # per item the answer's log-likelihood; the task's value is exp(-mean)


def pool_of(metric: str) -> str:
    """How ``metric``'s items pool into its value: exp(−mean) for a log-likelihood metric, else the mean."""
    return LOG_LIKELIHOOD_POOL if metric in LOG_LIKELIHOOD_METRICS else "mean"


def item_order(n: int, seed: int, task: int) -> tuple[int, ...]:
    """The order in which every candidate of a run reads task number ``task``'s ``n`` items."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, ORDER_STREAM, task]))
    return tuple(int(i) for i in rng.permutation(n))


def n_chunks(sizes: Sequence[int], chunk_items: int) -> int:
    """Chunks per candidate: about ``chunk_items`` items of all tasks together in each."""
    return max(1, math.ceil(sum(sizes) / chunk_items))


def chunk_bounds(n: int, chunks: int) -> tuple[int, ...]:
    """Where each chunk of a task with ``n`` items ends (``chunks + 1`` positions from 0 to n):
    every task advances by the same fraction of its items per chunk, and the first chunk holds an item of each."""
    return tuple(-(-k * n // chunks) for k in range(chunks + 1))


def pooled(aggregation: str, values: Sequence[float]) -> float:
    """The metric over these items: their mean, or exp(−mean) for a log-likelihood metric."""
    m = sum(values) / len(values)
    return math.exp(-m) if aggregation == LOG_LIKELIHOOD_POOL else m


def pooled_slope(aggregation: str, mean: float) -> float:
    """d pooled / d mean at ``mean`` (the delta method's factor)."""
    return -math.exp(-mean) if aggregation == LOG_LIKELIHOOD_POOL else 1.0


@dataclass(frozen=True)
class Estimate:
    """A value estimated from items, its standard error, and how many items it rests on."""

    value: float
    se: float
    n: int

    def above(self, z: float) -> bool:
        """Confidently positive at ``z`` standard errors."""
        return self.value - z * self.se > 0

    def below(self, z: float) -> bool:
        """Confidently negative at ``z`` standard errors."""
        return self.value + z * self.se < 0


def mean_estimate(values: Sequence[float]) -> Estimate:
    """The mean of the items and its standard error (sample standard deviation / √n; infinite below 2 items)."""
    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.inf, 0)
    m = sum(values) / n
    if n < 2:
        return Estimate(m, math.inf, n)
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return Estimate(m, math.sqrt(var / n), n)


@dataclass(frozen=True)
class Objective:
    """How one objective's per-item values become the oriented value a strategy sees, or (``reference``
    given) the normalized value reports rank by (``scoring.normalize.Normalizer``: value / reference when higher is
    better, reference / value when lower is)."""

    aggregation: str  # one of POOLED_AGGREGATIONS
    sign: float  # +1 when higher is better, −1 when lower is
    weight: float  # the objective's share of the scalarized fitness (weights sum to 1)
    reference: float | None = None  # the best single source's value: normalize by it

    def of_pooled(self, p: float) -> float:
        if self.reference is None:
            return self.sign * p
        return p / self.reference if self.sign > 0 else self.reference / p

    def slope(self, p: float) -> float:
        """d of_pooled / d p at ``p``."""
        if self.reference is None:
            return self.sign
        return 1 / self.reference if self.sign > 0 else -self.reference / p ** 2

    def value(self, values: Sequence[float]) -> float:
        return self.of_pooled(pooled(self.aggregation, values))


def fitness(objectives: Sequence[Objective], items: Sequence[Sequence[float]]) -> float:
    """The scalarized, oriented fitness of per-objective item values (each objective's prefix)."""
    return sum(o.weight * o.value(v) for o, v in zip(objectives, items, strict=True))


def paired_difference(objectives: Sequence[Objective], a: Sequence[Sequence[float]],
                      b: Sequence[Sequence[float]]) -> Estimate:
    """Fitness of ``a`` minus fitness of ``b`` on the items both have scored (per objective, the shorter
    prefix), with the standard error of the per-item differences carried through each objective's pooling
    by the delta method. ``n`` is the fewest common items of any objective."""
    value, var, n = 0.0, 0.0, math.inf
    for o, va, vb in zip(objectives, a, b, strict=True):
        m = min(len(va), len(vb))
        if m == 0:
            return Estimate(math.nan, math.inf, 0)
        n = min(n, m)
        if o.weight == 0:
            continue
        d = mean_estimate([x - y for x, y in zip(va[:m], vb[:m], strict=True)])
        value += o.weight * (o.value(va[:m]) - o.value(vb[:m]))
        mean_ab = (sum(va[:m]) + sum(vb[:m])) / (2 * m)
        slope = o.slope(pooled(o.aggregation, [mean_ab])) * pooled_slope(o.aggregation, mean_ab)
        var += (o.weight * slope * d.se) ** 2
    return Estimate(value, math.sqrt(var), int(n))


def combine(parts: Sequence[Mapping[str, TaskScore]]) -> dict[str, TaskScore]:
    """One candidate's chunk scores as one score per task: per-item values in chunk order, each metric pooled
    over all of them (chunks scored only the metrics a prefix estimates, see ``Scorer.score``)."""
    out: dict[str, TaskScore] = {}
    for name in dict.fromkeys(n for part in parts for n in part):
        scores = [part[name] for part in parts if name in part]
        per_item = {key: tuple(v for s in scores for v in s.per_item[key]) for key in scores[0].per_item}
        out[name] = replace(scores[0], per_item=per_item,
                            metrics={key: pooled(pool_of(key.split(",")[0]), v) for key, v in per_item.items()})
    return out
