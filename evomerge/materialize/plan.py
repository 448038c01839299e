"""MergePlan: a recipe resolved against loaded models — for each tensor, the operator and its parameters.

This is the one place where a recipe meets tensor names. Materializing a plan is pure tensor work:
no file is read or written here, but the statistics a recipe names (``statistics:``: checked by ``build``, each
linear weight's read as it is merged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor

from evomerge.config.search import DTYPE_NAMES
from evomerge.errors import EvomergeError
from evomerge.materialize.statistics import DESCRIPTIONS, StatisticsFiles, load_statistics
from evomerge.merge.draws import uniform_draws
from evomerge.merge.registry import STATISTICS, MergeMethod, Statistics, get_method
from evomerge.recipes.recipe import Recipe
from evomerge.sources.layers import KINDS, group_of, layer_groups, num_layers, param_kind
from evomerge.sources.pool import SourcePool

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}  # name -> torch dtype


@dataclass(frozen=True)
class TensorStep:
    """How one output tensor is made; ``method`` is None for tensors copied from the base."""

    name: str
    group: str
    method: MergeMethod | None
    source_params: Mapping[str, tuple[float, ...]]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class MergePlan:
    steps: tuple[TensorStep, ...]
    seed: int
    dtype: torch.dtype | None
    # the sources' statistics of each kind its methods need
    statistics: Mapping[Statistics, StatisticsFiles] = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, recipe: Recipe, pool: SourcePool) -> "MergePlan":
        names = pool.tensor_names
        n_layers = num_layers(pool.config, names)
        groups = layer_groups(names, n_layers, recipe.layer_granularity)
        known = set(groups) | {f"{g}:{k}" for g in groups for k in KINDS}
        unknown = sorted(set(recipe.groups) - known)
        if unknown:
            raise EvomergeError(
                f"recipe group '{unknown[0]}' does not exist in this model (groups: {', '.join(groups)}; "
                f"add ':attention', ':mlp' or ':other' to narrow one to a kind)"
            )
        steps = []
        for name in names:
            group = group_of(name, n_layers, recipe.layer_granularity)
            if not pool.is_mergeable(name):
                steps.append(TensorStep(name, group, None, {}, {}))
                continue
            spec = recipe.spec_for(group, param_kind(name))
            steps.append(TensorStep(name, group, get_method(spec.method), spec.source_params, spec.params))
        needing = {s.method.statistics: s.method.name for s in steps if s.method is not None and s.method.statistics}
        statistics = {}
        for kind, method in sorted(needing.items()):
            if recipe.statistics is None:
                raise EvomergeError(f"method '{method}' needs the sources' {DESCRIPTIONS[kind]} of calibration data: "
                                    "set 'statistics:' in the recipe to the folder that holds them (a run's "
                                    "statistics/)")
            statistics[kind] = load_statistics(recipe.statistics, kind, pool)
        dtype = DTYPES[recipe.dtype] if recipe.dtype else None
        return cls(tuple(steps), recipe.seed, dtype, statistics)

    def dtype_name(self, pool: SourcePool) -> str:
        """The merged model's dtype as a config names it: the recipe's, else the sources' own."""
        return str(self.dtype or pool.dtype).removeprefix("torch.")

    def merge_tensor(self, step: TensorStep, pool: SourcePool) -> Tensor:
        """The merged tensor in the output dtype (the base's dtype unless the recipe sets one)."""
        base = pool.base.tensors[step.name]
        if step.method is None:
            return base
        sources = [s.tensors[step.name] for s in pool.sources]
        kwargs: dict[str, Any] = {**{k: list(v) for k, v in step.source_params.items()}, **step.params}
        if step.method.random:
            kwargs["draws"] = [uniform_draws(self.seed, step.name, k, base.shape) for k in range(len(sources))]
        kind = step.method.statistics
        if kind is not None and kind in self.statistics:
            kwargs[STATISTICS[kind]] = self.statistics[kind].of(step.name)
        merged = step.method(base, sources, **kwargs)
        return merged.to(self.dtype or base.dtype)

    def iter_tensors(self, pool: SourcePool) -> Iterator[tuple[str, Tensor]]:
        for step in self.steps:
            yield step.name, self.merge_tensor(step, pool)

    def materialize(self, pool: SourcePool) -> dict[str, Tensor]:
        return dict(self.iter_tensors(pool))
