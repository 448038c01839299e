"""The fixed recipes a search must beat, as grids: one definition for run reports and the zoo's checks.

A family's best member is chosen on calibration data (never on held-out; ``scoring.normalize.Normalizer.best``):
that is the fair "best fixed recipe" a searched merge is compared with.

| family            | members                                                                  |
|-------------------|--------------------------------------------------------------------------|
| ``base``          | task arithmetic with every weight 0: θ = θ0                              |
| ``source<k>``     | linear, weight 1 for source k: θ = θ_k                                   |
| ``soup``          | linear, equal weights: the mean of the sources                           |
| ``task_arithmetic`` | weights 1, λ from LAMBDAS                                              |
| ``ties``          | weights 1, density from DENSITIES × λ from LAMBDAS                       |
| ``dare_ties``     | weights 1, density from DENSITIES × λ from LAMBDAS (the run's draws)      |
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.recipes.recipe import GroupSpec, Recipe

LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 16))  # 0.1 … 1.5
DENSITIES = (0.3, 0.5, 0.7)  # the densities TIES and DARE papers and mergekit examples use
GRID_FAMILIES = ("task_arithmetic", "ties", "dare_ties")  # families with more than one member
MERGE_FAMILIES = ("soup", *GRID_FAMILIES)  # the families that merge (not the base or one source alone)


@dataclass(frozen=True)
class FixedRecipe:
    name: str  # unique: "task_arithmetic@0.7", "ties@d0.5,l1" (the key baselines are cached under)
    family: str
    label: str  # for tables and plots
    method: str
    source_params: Mapping[str, tuple[float, ...]]
    params: Mapping[str, Any] = field(default_factory=dict)

    def recipe(self, base: Path, sources: tuple[Path, ...], *, layer_granularity: int = 1, dtype: str | None = None,
               seed: int = 0) -> Recipe:
        """This member over ``base`` and ``sources``; ``seed`` fixes DARE's draws as a search with it draws them."""
        spec = GroupSpec(self.method, dict(self.source_params), dict(self.params))
        return Recipe(base=base, sources=sources, default=spec, layer_granularity=layer_granularity, dtype=dtype, seed=seed)


def source_name(i: int) -> str:
    """The name (and family) of "source ``i`` alone"."""
    return f"source{i}"


def fixed_recipes(k: int, source_names: tuple[str, ...] | None = None, *, lambdas: Sequence[float] = LAMBDAS,
                  densities: Sequence[float] = DENSITIES) -> dict[str, list[FixedRecipe]]:
    """Every family's members for ``k`` sources, in table order; ``lambdas`` and ``densities`` are the grids
    (smaller ones for quick checks)."""
    names = source_names or tuple(f"source {i}" for i in range(k))
    ones = (1.0,) * k
    families: dict[str, list[FixedRecipe]] = {"base": [FixedRecipe("base", "base", "base", "task_arithmetic", {"weight": (0.0,) * k}, {"lam": 1.0})]}
    for i in range(k):
        onehot = tuple(1.0 if j == i else 0.0 for j in range(k))
        families[source_name(i)] = [FixedRecipe(source_name(i), source_name(i), f"{names[i]} alone", "linear", {"weight": onehot})]
    families["soup"] = [FixedRecipe("soup", "soup", "uniform soup", "linear", {"weight": (1.0 / k,) * k})]
    families["task_arithmetic"] = [
        FixedRecipe(f"task_arithmetic@{lam:g}", "task_arithmetic", f"task arithmetic (λ={lam:g})", "task_arithmetic",
                    {"weight": ones}, {"lam": lam}) for lam in lambdas]
    for method, title in (("ties", "TIES"), ("dare_ties", "DARE-TIES")):
        families[method] = [
            FixedRecipe(f"{method}@d{d:g},l{lam:g}", method, f"{title} (d={d:g}, λ={lam:g})", method,
                        {"weight": ones, "density": (d,) * k}, {"lam": lam}) for d in densities for lam in lambdas]
    return families
