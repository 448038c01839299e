"""The search space: genes with bounds, a flat unit-box encoding, and genome -> recipe decoding.

Optimizers see only points of ``[0, 1]^dim``; this module is the one place that knows what each
coordinate means and what its bounds are, and the one place that turns a point into a Recipe.
Genes: per merge unit (a layer group, or a group narrowed to a parameter kind) and per source, one
gene for each per-source parameter the candidate methods take (``weight``, ``density``); with
several methods, one categorical gene per unit picks the method. A method that takes calibration statistics
(RegMean, Fisher) reads them from the space's ``statistics`` folder (a run's), named by every recipe that uses one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from evomerge.config.search import SearchConfig
from evomerge.errors import EvomergeError
from evomerge.merge.registry import get_method, method_names
from evomerge.recipes.recipe import GroupSpec, Recipe
from evomerge.sources.folder import read_config, read_tensor_names
from evomerge.sources.layers import KINDS, layer_groups, num_layers


@dataclass(frozen=True)
class Gene:
    unit: str  # recipe group key: "layers.3" or "layers.3:mlp"
    param: str  # "weight", "density", or "method"
    source: int | None  # source index for per-source parameters
    low: float = 0.0
    high: float = 1.0
    choices: tuple[str, ...] = ()  # categorical genes only

    @property
    def name(self) -> str:
        return f"{self.unit}/{self.param}" + (f"/{self.source}" if self.source is not None else "")

    def decode(self, u: float) -> float | str:
        u = min(max(float(u), 0.0), 1.0)
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        return self.low + u * (self.high - self.low)

    def encode(self, value: float | str) -> float:
        if self.choices:
            return (self.choices.index(str(value)) + 0.5) / len(self.choices)
        if self.high == self.low:
            return 0.5
        return min(max((float(value) - self.low) / (self.high - self.low), 0.0), 1.0)


class GenomeSpace:
    """Genes over the merge units of one model family; decodes unit-box points to recipes."""

    def __init__(
        self,
        groups: Sequence[str],
        *,
        base: Path,
        sources: Sequence[Path],
        methods: Sequence[str],
        bounds: Mapping[str, tuple[float, float]] | None = None,
        parameters: Mapping[str, Any] | None = None,
        split_by_kind: bool = False,
        layer_granularity: int = 1,
        seed: int = 0,
        dtype: str | None = None,
        statistics: Path | None = None,
    ):
        if not methods:
            raise EvomergeError("config field 'genome.methods' is empty: name at least one merge method")
        self.methods = tuple(get_method(m).name for m in methods)
        unsearchable = [m for m in self.methods if not get_method(m).searchable]
        if unsearchable:
            searchable = ", ".join(m for m in method_names() if get_method(m).searchable)
            raise EvomergeError(f"config field 'genome.methods': '{unsearchable[0]}' cannot be searched per layer and "
                                f"source; use one of {searchable}")
        self.base, self.sources = base, tuple(sources)
        self.bounds = searched_bounds(self.methods, bounds or {})
        self.parameters = method_parameters(self.methods, parameters or {})
        # only decoder layers hold attention and MLP tensors; embeddings, final norm and head stay whole
        self.units = tuple(u for g in groups
                           for u in ([f"{g}:{k}" for k in KINDS] if split_by_kind and g.startswith("layers.") else [g]))
        self.layer_granularity, self.seed, self.dtype = layer_granularity, seed, dtype
        self.statistics = statistics
        genes: list[Gene] = []
        for unit in self.units:
            if len(self.methods) > 1:
                genes.append(Gene(unit, "method", None, choices=self.methods))
            for param, (low, high) in self.bounds.items():
                genes.extend(Gene(unit, param, k, low, high) for k in range(len(self.sources)))
        self.genes = tuple(genes)

    @classmethod
    def for_config(cls, cfg: SearchConfig, statistics: Path | None = None) -> "GenomeSpace":
        """The space of a search config: layer groups read from the base's tensor names (no weights loaded);
        ``statistics``: the run's statistics folder, for the methods that take them."""
        base = cfg.sources.base
        names = read_tensor_names(base, allow_pickle=cfg.sources.allow_pickle)
        groups = layer_groups(names, num_layers(read_config(base), names), cfg.genome.layer_granularity)
        g = cfg.genome
        return cls(groups, base=base, sources=cfg.sources.models, methods=g.methods, bounds=g.bounds,
                   parameters=g.parameters,
                   split_by_kind=g.split_by_kind, layer_granularity=g.layer_granularity, seed=cfg.seed, dtype=g.dtype,
                   statistics=statistics)

    @property
    def dim(self) -> int:
        return len(self.genes)

    def decode(self, x: Sequence[float]) -> dict[str, GroupSpec]:
        """Unit-box point -> a spec per merge unit (values clamped to the bounds)."""
        if len(x) != self.dim:
            raise ValueError(f"genome has {len(x)} genes, space has {self.dim}")
        values: dict[str, dict[str, Any]] = {u: {} for u in self.units}
        for gene, u in zip(self.genes, x, strict=True):
            slot = values[gene.unit]
            if gene.source is None:
                slot[gene.param] = gene.decode(u)
            else:
                slot.setdefault(gene.param, [0.0] * len(self.sources))[gene.source] = gene.decode(u)
        specs = {}
        for unit, slot in values.items():
            method = get_method(str(slot.get("method", self.methods[0])))
            source_params = {p: tuple(slot[p]) for p in method.per_source if p in slot}
            specs[unit] = GroupSpec(method.name, source_params, dict(self.parameters[method.name]))
        return specs

    def to_recipe(self, x: Sequence[float]) -> Recipe:
        """The one mapping genome -> recipe; every unit is spelled out as a group. The recipe names the statistics
        folder only when a unit's method takes statistics, so a data-free genome merges as the same fixed recipe."""
        specs = self.decode(x)
        first = specs[self.units[0]]
        recipe = Recipe(
            base=self.base,
            sources=self.sources,
            default=first,
            groups=specs,
            layer_granularity=self.layer_granularity,
            dtype=self.dtype,
            seed=self.seed,
        )
        return replace(recipe, statistics=self.statistics) if recipe.statistics_kinds else recipe

    def encode(self, method: str | None = None, **per_source: Sequence[float]) -> tuple[float, ...]:
        """A point where every unit uses the same values, e.g. ``encode(weight=[1, 0, 0])`` (for seeding)."""
        return self.encode_units(lambda unit: {"method": method, **per_source})

    def encode_units(self, values: Callable[[str], Mapping[str, Any]]) -> tuple[float, ...]:
        """A point from each unit's values: ``values(unit)`` gives ``method`` and per-source lists; a
        parameter it leaves out takes the top of its bounds (density 1: nothing dropped)."""
        chosen = {unit: values(unit) for unit in self.units}
        x = []
        for gene in self.genes:
            given = chosen[gene.unit]
            if gene.choices:
                x.append(gene.encode(given.get("method") or self.methods[0]))
            elif gene.param in given:
                x.append(gene.encode(given[gene.param][gene.source]))
            else:
                x.append(gene.encode(self.bounds.get(gene.param, (1.0, 1.0))[1]))
        return tuple(x)

    def key(self, x: Sequence[float]) -> str:
        """Content hash of the decoded genome: equal merges share a key (the evaluation cache key)."""
        decoded = {
            unit: {"method": s.method, **{k: [round(v, 10) for v in vals] for k, vals in s.source_params.items()}}
            for unit, s in self.decode(x).items()
        }
        blob = json.dumps(decoded, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def searched_bounds(methods: Sequence[str],
                    bounds: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Gene bounds of every per-source parameter the methods take: the config's, else the declared ones. Methods
    share a gene of one name, so its bounds must fit every one of their domains (Fisher's weights are ≥ 0)."""
    taken = [(m, p) for m in methods for p in get_method(m).params if p.per_source]
    declared = {p.recipe_name: p for _, p in taken}
    unknown = sorted(set(bounds) - set(declared))
    if unknown:
        raise EvomergeError(f"config field 'genome.bounds.{unknown[0]}': no per-source parameter of "
                            f"{', '.join(methods)} has that name (searched: {', '.join(declared)})")
    out = {}
    for name, param in sorted(declared.items()):
        low, high = bounds.get(name, param.search or (0.0, 1.0))
        for method, p in taken:
            if p.recipe_name != name or p.domain is None:
                continue
            for end in (low, high):
                if not p.domain.contains(end):
                    raise EvomergeError(f"config field 'genome.bounds.{name}': {end:g} is outside "
                                        f"{p.domain.describe()}, which {method} takes")
        out[param.name] = (float(low), float(high))
    return out


def method_parameters(methods: Sequence[str], parameters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per method, the fixed global parameters it takes from the config (recipe spellings -> Python names)."""
    out: dict[str, dict[str, Any]] = {m: {} for m in methods}
    for key, value in parameters.items():
        takers = [m for m in methods if any(p.recipe_name == key and not p.per_source for p in get_method(m).params)]
        if not takers:
            raise EvomergeError(f"config field 'genome.parameters.{key}': none of {', '.join(methods)} takes a global "
                                f"parameter '{key}'")
        for m in takers:
            method = get_method(m)
            param = method.param(key)
            method.validate(method.min_sources, {}, {param.name: value})
            out[m][param.name] = value
    return out
