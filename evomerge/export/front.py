"""The Pareto front of a run, and its knee.

Objectives are oriented so that higher is better (``record["objectives"]``, as the driver logs
them). The front holds the successful candidates that no other successful candidate dominates,
one record per genome (the first evaluation of it; later cache hits of the same genome are the
same point).

The *knee* is the front member closest (Euclidean) to the utopia point once every objective is
rescaled to [0, 1] over the front (0 = the front's worst value, 1 = its best; an objective on
which all members tie counts 1 for all). The utopia point (1, …, 1) is the best of every
objective at once; the knee is the most balanced trade-off, whatever the objectives' units.
"""

from __future__ import annotations

import math
from typing import Any, Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere (higher is better)."""
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Non-dominated successful candidates (objectives oriented: higher is better), one per genome."""
    unique: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["error"] is None and r.get("cached_from") is None:
            unique.setdefault(r["key"], r)
    pts = list(unique.values())
    return [r for r in pts if not any(dominates(o["objectives"], r["objectives"]) for o in pts)]


def rescaled(points: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
    """Each objective mapped to [0, 1] over ``points`` (worst 0, best 1; all equal -> 1)."""
    if not points:
        return []
    lows = [min(col) for col in zip(*points)]
    highs = [max(col) for col in zip(*points)]
    return [
        tuple((v - lo) / (hi - lo) if hi > lo else 1.0 for v, lo, hi in zip(p, lows, highs))
        for p in points
    ]


def knee(front: list[dict[str, Any]]) -> dict[str, Any]:
    """The front member closest to the utopia point in rescaled objective space (ties: lowest index)."""
    if not front:
        raise ValueError("knee of an empty front")
    scaled = rescaled([r["objectives"] for r in front])
    distance = [math.dist(p, (1.0,) * len(p)) for p in scaled]
    best = min(range(len(front)), key=lambda i: (distance[i], front[i]["index"]))
    return front[best]
