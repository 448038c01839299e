"""Where every search starts: points of the genome space that fixed recipes already make good."""

from __future__ import annotations

from evomerge.genome.space import GenomeSpace


def seed_points(space: GenomeSpace) -> list[tuple[float, ...]]:
    """All weights 1 (plain task arithmetic: the first point and CMA-ES's mean), then each source alone
    (the natural niches' seed models)."""
    k = len(space.sources)
    together = space.encode(weight=[1.0] * k, density=[1.0] * k)
    alone = [space.encode(weight=[1.0 if j == i else 0.0 for j in range(k)], density=[1.0] * k) for i in range(k)]
    return [together, *alone]
