"""A merge recipe: which method, which models, which parameters — per layer group where wanted.

A Recipe is plain data: what ``evomerge merge`` reads from a YAML file, what a genome decodes to, what
a worker materializes and an export writes back. Parameters are stored under their Python names
(``lam``); the YAML forms spell them as recipes and mergekit do (``lambda``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from evomerge.errors import EvomergeError
from evomerge.merge.registry import MergeMethod, Statistics, get_method


@dataclass(frozen=True)
class GroupSpec:
    """What to do with the tensors of one layer group."""

    method: str
    source_params: Mapping[str, tuple[float, ...]]  # per-source parameter -> one value per source
    params: Mapping[str, Any]  # global parameters, Python spelling (``lam``)

    @property
    def merge_method(self) -> MergeMethod:
        return get_method(self.method)


@dataclass(frozen=True)
class Recipe:
    base: Path | None
    sources: tuple[Path, ...]
    default: GroupSpec
    groups: Mapping[str, GroupSpec] = field(default_factory=dict)  # fully resolved overrides
    layer_granularity: int = 1
    dtype: str | None = None  # one of config.search.DTYPE_NAMES; None: the base's
    seed: int = 0  # fixes the draws of random sparsification
    tokenizer_source: Path | None = None  # the model whose tokenizer, chat template and eos the result carries
    statistics: Path | None = None  # the folder of the sources' calibration statistics, for methods that need them

    @property
    def tokenizer_folder(self) -> Path:
        """Where the merged folder's tokenizer files come from: the tokenizer source, else the template."""
        return self.tokenizer_source or self.template

    def spec_for(self, group: str, kind: str | None = None) -> GroupSpec:
        """The spec of a tensor: ``group:kind`` overrides ``group``, which overrides the default."""
        if kind is not None and f"{group}:{kind}" in self.groups:
            return self.groups[f"{group}:{kind}"]
        return self.groups.get(group, self.default)

    @property
    def template(self) -> Path:
        """The model whose config and tokenizer the merged folder carries."""
        return self.base if self.base is not None else self.sources[0]

    @property
    def inputs(self) -> list[tuple[str, Path]]:
        """What merging this recipe reads, labelled (outputs stay outside): the model folders and the statistics."""
        folders = dict.fromkeys((self.template, *self.sources, self.tokenizer_folder))
        return [("the model folder", p) for p in folders] + (
            [("the statistics folder", self.statistics)] if self.statistics is not None else [])

    @property
    def specs(self) -> list[GroupSpec]:
        """The default and every group's spec."""
        return [self.default, *self.groups.values()]

    @property
    def statistics_kinds(self) -> list[Statistics]:
        """The kinds of calibration statistics its methods take (``MergeMethod.statistics``), sorted."""
        return sorted({kind for spec in self.specs if (kind := spec.merge_method.statistics) is not None})

    def same_merge(self, other: "Recipe", tol: float = 1e-9) -> bool:
        """Whether both recipes make the same merge in every group (up to float rounding): one method per group,
        its parameters with defaults filled, per-source values equal within ``tol`` (a unit-box round trip)."""
        if (self.base, self.sources, self.dtype, self.seed, self.layer_granularity, self.statistics) != (
                other.base, other.sources, other.dtype, other.seed, other.layer_granularity, other.statistics):
            return False
        return all(_same_spec(self.spec_for(g), other.spec_for(g), tol) for g in {*self.groups, *other.groups, ""})

    def validate(self) -> None:
        for name, spec in [("recipe", self.default), *self.groups.items()]:
            method = spec.merge_method
            if method.needs_base and self.base is None:
                raise EvomergeError(f"method '{method.name}' needs a base model: add 'base:' to the recipe")
            try:
                method.validate(len(self.sources), spec.source_params, spec.params)
            except EvomergeError as e:
                raise EvomergeError(f"{e} (in {name if name == 'recipe' else 'group ' + name})") from None


def _same_spec(a: GroupSpec, b: GroupSpec, tol: float) -> bool:
    if a.method != b.method:
        return False
    (ga, pa), (gb, pb) = _canonical(a), _canonical(b)
    return ga == gb and set(pa) == set(pb) and all(_close(pa[k], pb[k], tol) for k in pa)


def _canonical(spec: GroupSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """Global and per-source parameters with defaults filled; for a task-vector method that does not normalize,
    θ0 + λ Σ w_k m_k τ_k depends on λ·w only (masks and elected signs do not change when every w_k scales)."""
    method = spec.merge_method
    params = {**method.globals, **spec.params}
    per_source = {**method.per_source, **spec.source_params}
    weight = per_source.get("weight")
    if method.family is not None and not params.get("normalize") and "lam" in params and isinstance(weight, tuple):
        per_source["weight"] = tuple(params["lam"] * w for w in weight)
        params["lam"] = 1.0
    return params, per_source


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= tol
    return bool(a == b)
