"""Where every search starts: the fixed recipes a user would try first, as points of the genome space.

A search that starts where fixed recipes already are only has to find what they miss, so the first
candidates of every run are: task arithmetic over a λ grid (every weight λ), each source alone, each
sparsifying method of the genome at its usual densities, and weights that change linearly with depth
(two numbers per schedule, as LiNeS scales task vectors by layer). CMA-ES continues from the best of
them; natural niches and NSGA-II take them as their first population; optuna enqueues them.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from evomerge.genome.space import GenomeSpace
from evomerge.merge.registry import get_method

LAMBDAS = (0.2, 0.4, 0.6, 0.8, 1.0, 1.2)  # task arithmetic: every weight λ
DENSITIES = (0.3, 0.5, 0.7)  # the usual densities of TIES and DARE
SCHEDULES = ((0.4, 1.0), (1.0, 0.4), (0.2, 1.2))  # weight at the first layer -> weight at the last
_LAYER = re.compile(r"^layers\.(\d+)")


def seed_points(space: GenomeSpace) -> list[tuple[float, ...]]:
    """The fixed recipes, in this order: λ grid, sources alone, densities, depth schedules (duplicates dropped).

    The λ grid and the schedules scale the weights, so they use the first method that does not divide
    by the weights' sum (task arithmetic, DARE, …); a genome of normalizing methods only skips them."""
    k = len(space.sources)
    scaled = [m for m in space.methods
              if not space.parameters[m].get("normalize", get_method(m).globals.get("normalize"))]
    first = space.methods[0]
    points = [space.encode(method=scaled[0], weight=[lam] * k) for lam in LAMBDAS] if scaled else []
    points += [space.encode(method=first, weight=[1.0 if j == i else 0.0 for j in range(k)]) for i in range(k)]
    for method in space.methods:
        if "density" in get_method(method).per_source:
            points += [space.encode(method=method, weight=[1.0] * k, density=[d] * k) for d in DENSITIES]
    depth = unit_depths(space.units)
    for start, end in SCHEDULES if scaled else ():
        points.append(space.encode_units(_schedule(scaled[0], start, end, depth, k)))
    return list(dict.fromkeys(points))


def _schedule(method: str, start: float, end: float, depth: Mapping[str, float],
              k: int) -> Callable[[str], dict[str, Any]]:
    """Each unit's values on a depth schedule: weight ``start`` at the first layer to ``end`` at the last."""
    return lambda unit: {"method": method, "weight": [start + (end - start) * depth[unit]] * k}


def unit_depths(units: tuple[str, ...]) -> dict[str, float]:
    """Each unit's position from the first layer (0) to the last (1); embeddings at 0, the head and final norm at 1."""
    first = {u: int(m.group(1)) for u in units if (m := _LAYER.match(u))}
    last = max(first.values(), default=0) or 1
    return {u: first[u] / last if u in first else (0.0 if u.startswith("embed") else 1.0) for u in units}
