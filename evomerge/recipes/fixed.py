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
| ``tsvm``          | TSV-M at its paper's default: weights 1, λ (the paper's α) 1.0           |
| ``regmean``       | RegMean at α = 0.9, from the sources' calibration statistics (a run's)   |
| ``fisher``        | Fisher averaging, weights 1 and ε = 10⁻⁶, from the same folder            |

``regmean`` and ``fisher`` are data-dependent: their recipes name the folder of the sources' input Gram matrices
and diagonal Fisher, which a run keeps (``calibrated_recipes``, apart from ``fixed_recipes``: the zoo's checks
have no such folder).
One more baseline is a procedure over scores, not a grid: the greedy soup (``export.baselines.greedy_soup``),
whose trial soups are ``soup_of`` subsets of the sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.merge.registry import get_method
from evomerge.recipes.recipe import GroupSpec, Recipe

LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 16))  # 0.1 … 1.5
DENSITIES = (0.3, 0.5, 0.7)  # the densities TIES and DARE papers and mergekit examples use
GRID_FAMILIES = ("task_arithmetic", "ties", "dare_ties")  # families with more than one member
GREEDY_SOUP = "greedy_soup"  # the family of the greedy soup's trial soups (a procedure, not a fixed_recipes family)
# the fixed_recipes families that merge (not the base or one source), in the tables' order: one-member families first
MERGE_FAMILIES = ("soup", "tsvm", *GRID_FAMILIES)
CALIBRATED_FAMILIES = ("regmean", "fisher")  # the families of ``calibrated_recipes``: they merge too


@dataclass(frozen=True)
class FixedRecipe:
    name: str  # unique: "task_arithmetic@0.7", "ties@d0.5,l1" (the key baselines are cached under)
    family: str
    label: str  # for tables and plots
    method: str
    source_params: Mapping[str, tuple[float, ...]]
    params: Mapping[str, Any] = field(default_factory=dict)

    def recipe(self, base: Path, sources: tuple[Path, ...], *, layer_granularity: int = 1, dtype: str | None = None,
               seed: int = 0, statistics: Path | None = None) -> Recipe:
        """This member over ``base`` and ``sources``; ``seed`` fixes DARE's draws as a search with it draws them;
        ``statistics``: the sources' statistics folder, named by the recipe only where the method needs it."""
        spec = GroupSpec(self.method, dict(self.source_params), dict(self.params))
        folder = statistics if get_method(self.method).statistics else None
        return Recipe(base=base, sources=sources, default=spec, layer_granularity=layer_granularity, dtype=dtype,
                      seed=seed, statistics=folder)


def source_name(i: int) -> str:
    """The name (and family) of "source ``i`` alone"."""
    return f"source{i}"


def fixed_recipes(k: int, source_names: tuple[str, ...] | None = None, *, lambdas: Sequence[float] = LAMBDAS,
                  densities: Sequence[float] = DENSITIES) -> dict[str, list[FixedRecipe]]:
    """Every family's members for ``k`` sources, in table order; ``lambdas`` and ``densities`` are the grids
    (smaller ones for quick checks)."""
    names = source_names or tuple(f"source {i}" for i in range(k))
    ones = (1.0,) * k
    families: dict[str, list[FixedRecipe]] = {"base": [FixedRecipe("base", "base", "base", "task_arithmetic",
                                                                   {"weight": (0.0,) * k}, {"lam": 1.0})]}
    for i in range(k):
        onehot = tuple(1.0 if j == i else 0.0 for j in range(k))
        families[source_name(i)] = [FixedRecipe(source_name(i), source_name(i), f"{names[i]} alone", "linear",
                                                {"weight": onehot})]
    families["soup"] = [uniform_soup(k)]
    families["task_arithmetic"] = [
        FixedRecipe(f"task_arithmetic@{lam:g}", "task_arithmetic", f"task arithmetic (λ={lam:g})", "task_arithmetic",
                    {"weight": ones}, {"lam": lam}) for lam in lambdas]
    for method, title in (("ties", "TIES"), ("dare_ties", "DARE-TIES")):
        families[method] = [
            FixedRecipe(f"{method}@d{d:g},l{lam:g}", method, f"{title} (d={d:g}, λ={lam:g})", method,
                        {"weight": ones, "density": (d,) * k}, {"lam": lam}) for d in densities for lam in lambdas]
    families["tsvm"] = [FixedRecipe("tsvm", "tsvm", "TSV-M (α=1)", "tsvm", {"weight": ones}, {"lam": 1.0})]
    return families


def calibrated_recipes(k: int) -> dict[str, list[FixedRecipe]]:
    """The families whose method needs the sources' calibration statistics, at their papers' defaults."""
    alpha = get_method("regmean").globals["alpha"]
    epsilon = get_method("fisher").globals["epsilon"]
    return {"regmean": [FixedRecipe("regmean", "regmean", f"RegMean (α={alpha:g})", "regmean", {}, {"alpha": alpha})],
            "fisher": [FixedRecipe("fisher", "fisher", "Fisher averaging", "fisher", {"weight": (1.0,) * k},
                                   {"epsilon": epsilon})]}


def merges(family: str) -> bool:
    """Whether a family merges models (the base and each source alone do not):
    the "best fixed recipe" is one of these."""
    return family in MERGE_FAMILIES or family in CALIBRATED_FAMILIES or family == GREEDY_SOUP


def uniform_soup(k: int) -> FixedRecipe:
    return FixedRecipe("soup", "soup", "uniform soup", "linear", {"weight": (1.0 / k,) * k})


def soup_of(members: Sequence[int], k: int, source_names: tuple[str, ...] | None = None) -> FixedRecipe:
    """The uniform soup of some sources, in the greedy soup's family. One source is ``source<i>`` and all k are
    ``soup`` by name, the same merges as those rows, so their scores are read from the log instead of scored again."""
    names = source_names or tuple(f"source {i}" for i in range(k))
    chosen = sorted(set(members))
    weights = tuple(1.0 / len(chosen) if i in chosen else 0.0 for i in range(k))
    name = source_name(chosen[0]) if len(chosen) == 1 else "soup" if len(chosen) == k else \
        f"{GREEDY_SOUP}@{'+'.join(map(str, chosen))}"
    label = f"greedy soup ({' + '.join(names[i] for i in chosen)})"
    return FixedRecipe(name, GREEDY_SOUP, label, "linear", {"weight": weights})
