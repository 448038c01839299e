"""evomerge's recipe YAML, read and written through one schema::

    method: ties
    base: ./base                       # paths relative to the recipe file
    sources:
      - model: ./math
        parameters: {weight: 1.0, density: 0.5}
      - model: ./code
        parameters: {weight: 0.7, density: 0.5}
    parameters: {lambda: 1.0}          # the method's global parameters
    groups:                            # optional per-layer-group overrides;
      layers.0:                        # 'layers.0:attention' / ':mlp' / ':other' narrow to a kind
        method: task_arithmetic        # a group may even use another method
        parameters: {lambda: 0.8}
        sources: [{weight: 1.2}, {weight: 0.3}]
    layer_granularity: 1
    dtype: bfloat16                    # default: each tensor keeps the base's dtype
    seed: 0                            # fixes DARE/DELLA draws
    tokenizer_source: ./chat           # optional: tokenizer, chat template and eos of this model (default: the base)
    statistics: ./run/statistics       # for regmean, fisher: the sources' statistics (a run's statistics/)

"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from evomerge.config.schema import dump, load
from evomerge.config.search import DType
from evomerge.errors import EvomergeError
from evomerge.merge.registry import get_method
from evomerge.recipes.recipe import GroupSpec, Recipe


@dataclass(frozen=True)
class SourceEntry:
    model: Path
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupEntry:
    method: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    sources: tuple[Mapping[str, Any], ...] | None = None  # one mapping per source


@dataclass(frozen=True)
class RecipeFile:
    method: str
    sources: tuple[SourceEntry, ...] = field(metadata={"nonempty": True})
    base: Path | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    groups: Mapping[str, GroupEntry] = field(default_factory=dict)
    layer_granularity: int = field(default=1, metadata={"ge": 1})
    dtype: DType | None = None
    seed: int = field(default=0, metadata={"ge": 0})
    tokenizer_source: Path | None = None
    statistics: Path | None = None


def parse_recipe(data: Mapping[str, Any], root: Path | None = None) -> Recipe:
    """A Recipe from evomerge's YAML form (relative paths against ``root``)."""
    file = load(RecipeFile, data, what="recipe", root=root)
    n = len(file.sources)
    default = group_spec(file.method, [s.parameters for s in file.sources], file.parameters, "sources[].parameters")
    groups = {name: _override(default, body, n, f"groups.{name}") for name, body in file.groups.items()}
    return Recipe(
        base=file.base, sources=tuple(s.model for s in file.sources), default=default, groups=groups,
        layer_granularity=file.layer_granularity, dtype=file.dtype, seed=file.seed,
        tokenizer_source=file.tokenizer_source, statistics=file.statistics,
    )


def recipe_data(recipe: Recipe) -> dict[str, Any]:
    """The YAML form, every group spelled out in full (plain data; ``parse_recipe`` reads it back)."""
    n = len(recipe.sources)
    file = RecipeFile(
        method=recipe.default.method,
        base=recipe.base,
        sources=tuple(SourceEntry(p, _spelled(recipe.default, per_source=k)) for k, p in enumerate(recipe.sources)),
        parameters=_spelled(recipe.default),
        groups={g: GroupEntry(s.method, _spelled(s), tuple(_spelled(s, per_source=k) for k in range(n)))
                for g, s in recipe.groups.items()},
        layer_granularity=recipe.layer_granularity, dtype=recipe.dtype, seed=recipe.seed,  # type: ignore[arg-type]
        tokenizer_source=recipe.tokenizer_source, statistics=recipe.statistics,
    )
    data = dump(file)
    for optional in ("tokenizer_source", "statistics"):
        if data[optional] is None:
            del data[optional]  # the default: recipes without one read as before
    return data


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_data(recipe), sort_keys=False)


def group_spec(method_name: str, per_source: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
               where: str) -> GroupSpec:
    """A spec from recipe spellings: one value per source for each per-source parameter any source gives."""
    method = get_method(method_name)
    keys = sorted({k for entry in per_source for k in entry})
    values: dict[str, tuple[float, ...]] = {}
    for key in keys:
        missing = [i for i, entry in enumerate(per_source) if key not in entry]
        if missing:
            raise EvomergeError(f"{where}: source {missing[0]} has no '{key}' while others do: give it for every "
                                "source")
        values[method.param(key).name] = tuple(entry[key] for entry in per_source)
    return GroupSpec(method.name, values, {method.param(k).name: v for k, v in params.items()})


def _override(default: GroupSpec, body: GroupEntry, n_sources: int, where: str) -> GroupSpec:
    method = get_method(body.method or default.method)
    entries = body.sources if body.sources is not None else ({},) * n_sources
    if len(entries) != n_sources:
        raise EvomergeError(f"{where}.sources has {len(entries)} entries but there are {n_sources} sources: give one "
                            "per source")
    own = group_spec(method.name, list(entries), body.parameters, f"{where}.sources")
    inherited = default if method.name == default.method else _keep_known(default, method.name)
    return GroupSpec(method.name, {**inherited.source_params, **own.source_params}, {**inherited.params, **own.params})


def _keep_known(spec: GroupSpec, method_name: str) -> GroupSpec:
    """The parameters of ``spec`` that another method also takes (a group switching methods keeps those)."""
    method = get_method(method_name)
    return GroupSpec(method_name, {k: v for k, v in spec.source_params.items() if k in method.per_source},
                     {k: v for k, v in spec.params.items() if k in method.globals})


def _spelled(spec: GroupSpec, per_source: int | None = None) -> dict[str, Any]:
    """Global parameters (or source ``per_source``'s values) under their recipe spellings."""
    method = spec.merge_method
    if per_source is None:
        return {method.param(k).recipe_name: v for k, v in spec.params.items()}
    return {method.param(k).recipe_name: v[per_source] for k, v in spec.source_params.items()}
