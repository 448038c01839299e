"""Pareto dominance over objective vectors (every objective maximized): fronts, crowding, the knee.

A leaf module: strategies (NSGA-II), the run's status and the export all read the same definitions.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

T = TypeVar("T")


def dominates(a: ArrayLike, b: ArrayLike) -> bool:
    """``a`` is at least as good as ``b`` everywhere and better somewhere."""
    a, b = np.asarray(a), np.asarray(b)
    return bool(np.all(a >= b) and np.any(a > b))


def non_dominated_sort(objectives: ArrayLike) -> list[list[int]]:
    """Fronts of a set of objective vectors (rows): front 0 is non-dominated, front 1 is non-dominated
    once front 0 is removed, ... (Deb's fast non-dominated sort). Indices ascend within a front."""
    f = np.asarray(objectives, dtype=float)
    n = f.shape[0]
    if n == 0:
        return []
    ge = np.all(f[:, None, :] >= f[None, :, :], axis=2)
    gt = np.any(f[:, None, :] > f[None, :, :], axis=2)
    dom = ge & gt  # dom[i, j]: i dominates j
    count = dom.sum(axis=0)  # how many dominate j
    fronts: list[list[int]] = []
    current = [i for i in range(n) if count[i] == 0]
    while current:
        fronts.append(current)
        nxt = []
        for i in current:
            for j in np.flatnonzero(dom[i]):
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(int(j))
        current = sorted(nxt)
    return fronts


def pareto_ranks(objectives: ArrayLike) -> NDArray[np.int64]:
    """The front number of each row (0 = non-dominated)."""
    fronts = non_dominated_sort(objectives)
    rank = np.zeros(sum(len(fr) for fr in fronts), dtype=np.int64)
    for r, front in enumerate(fronts):
        rank[front] = r
    return rank


def crowding_distance(objectives: ArrayLike) -> NDArray[np.float64]:
    """NSGA-II crowding distance of each row of one front: per objective, the boundary points get
    infinity and the others the gap between their neighbours divided by the objective's range; summed."""
    f = np.asarray(objectives, dtype=float)
    n, m = f.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(f[:, k], kind="stable")
        span = f[order[-1], k] - f[order[0], k]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span <= 0:
            continue
        dist[order[1:-1]] += (f[order[2:], k] - f[order[:-2], k]) / span
    return dist


def front(items: Sequence[T], values: Callable[[T], Sequence[float]]) -> list[T]:
    """The items no other item dominates, in their given order."""
    fronts = non_dominated_sort([values(item) for item in items])
    return [items[i] for i in fronts[0]] if fronts else []


def rescaled(points: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
    """Each objective mapped to [0, 1] over ``points`` (worst 0, best 1; all equal -> 1)."""
    if not points:
        return []
    lows = [min(col) for col in zip(*points, strict=True)]
    highs = [max(col) for col in zip(*points, strict=True)]
    return [tuple((v - lo) / (hi - lo) if hi > lo else 1.0 for v, lo, hi in zip(p, lows, highs, strict=True))
            for p in points]


def knee(items: Sequence[T], values: Callable[[T], Sequence[float]]) -> T:
    """The item closest (Euclidean) to the utopia point once each objective is rescaled over ``items``:
    the most balanced trade-off, whatever the objectives' units (ties: the first item)."""
    if not items:
        raise ValueError("knee of an empty set")
    scaled = rescaled([values(item) for item in items])
    distance = [math.dist(p, (1.0,) * len(p)) for p in scaled]
    return items[min(range(len(items)), key=lambda i: distance[i])]
