"""Parameters several merge methods share, declared once (domains, search bounds, spellings)."""

from __future__ import annotations

from evomerge.merge.registry import Domain, Param

UNIT = Domain(0.0, 1.0)

WEIGHT = Param("weight", 1.0, per_source=True, search=(0.0, 2.0))
# Densities below 0.1 keep almost nothing of a task vector; the search starts above that.
DENSITY = Param("density", 1.0, per_source=True, domain=Domain(0.0, 1.0, low_open=True), search=(0.1, 1.0))
LAMBDA = Param("lam", 1.0, spelling="lambda")
GAMMA = Param("gamma", 0.01, domain=UNIT)
EPSILON = Param("epsilon", 0.15, domain=UNIT)
T = Param("t", 0.5, domain=UNIT)


def normalize(default: bool) -> Param:
    """Divide by the (agreeing) weights' sum; each method has its own default, as in mergekit."""
    return Param("normalize", default)
