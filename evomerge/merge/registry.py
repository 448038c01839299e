"""Merge-method registry: each method declared once — its function, family and parameters.

A declaration says everything the rest of the program needs: the recipe reader and checker read the
parameters' spellings and domains, the genome reads which parameters are per source and their search
bounds, the fused materializer reads the family (which entries of each task vector survive, and
whether signs are elected), the exporter reads the mergekit spellings. Adding a method is one
declaration next to its function.

Calling convention::

    method.fn(base, sources, weight=[...], density=[...], lam=1.0, draws=[...]) -> Tensor

``base`` is the base tensor (``None`` for methods that do not use one), ``sources`` the source
tensors, all of one shape. A method whose family drops entries at random receives ``draws``, one
tensor of U[0, 1) numbers per source, so the function itself stays pure. Math runs in float32, or
float64 when the inputs are float64; the caller casts the result to the output dtype once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

from torch import Tensor

from evomerge.errors import EvomergeError

Sparsify = Literal["none", "magnitude", "random", "outliers", "ranked_random"]
Statistics = Literal["gram", "fisher"]  # the kinds of calibration statistics a method may take
STATISTICS: dict[Statistics, str] = {"gram": "grams", "fisher": "fishers"}  # kind -> the method's keyword for them


def check_one_per_source(method: str, what: str, statistics: Sequence[Any], sources: Sequence[Any]) -> None:
    """A method's statistics come one per source (``what``: how its message names them), else a one-line error."""
    if len(statistics) != len(sources):
        raise EvomergeError(f"{method}: {len(statistics)} {what} for {len(sources)} sources; give one per source")


@dataclass(frozen=True)
class Domain:
    """Allowed values of a parameter, for validation messages that say how to fix them."""

    low: float
    high: float
    low_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def describe(self) -> str:
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Param:
    """One parameter of a merge method."""

    name: str  # the Python argument name
    default: Any  # its type is the parameter's: a bool is a flag, an int takes whole numbers only
    per_source: bool = False  # one value per source model (a gene per source when searched)
    domain: Domain | None = None  # allowed values; None: any finite number (or a bool for flags)
    search: tuple[float, float] | None = None  # default search bounds of its gene
    spelling: str | None = None  # how recipes and mergekit write it, where that differs from ``name``
    mergekit: bool = True  # mergekit's method of the same name takes it and computes the same

    @property
    def recipe_name(self) -> str:
        return self.spelling or self.name


@dataclass(frozen=True)
class Family:
    """Generalized task arithmetic: which entries of each task vector survive, and whether signs are elected."""

    sparsify: Sparsify
    consensus: bool  # TIES sign election and the disjoint mean

    @property
    def random(self) -> bool:
        return self.sparsify in ("random", "ranked_random")


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., Tensor]
    params: tuple[Param, ...]
    needs_base: bool = True
    min_sources: int = 1
    max_sources: int | None = None
    family: Family | None = None  # None: not a GTA family member (linear, slerp, model_stock, tsvm, pcb)
    task_vector: bool = False  # a task-vector method over any number of sources with its own body (tsvm, pcb)
    mergekit: bool = True  # mergekit has a method of this name that computes the same
    # Statistics of calibration data the method takes besides the tensors, under the keyword STATISTICS names:
    # "gram" (RegMean) receives ``grams``, one input Gram matrix per source for a linear weight, None for every
    # other tensor; "fisher" receives ``fishers``, one diagonal Fisher per source of the tensor's shape, None
    # for a tensor the statistics lack.
    statistics: Statistics | None = None
    doc: str = ""
    # Peak full-size float32 temporaries of the eager operator, a·K + b copies of the tensor (the memory plan's
    # scratch where the method has no fused kernel; tsvm and pcb measured by ru_maxrss on a 2048 × 4096 tensor).
    eager_copies: tuple[int, int] = (1, 4)

    @property
    def per_source(self) -> dict[str, Any]:
        """Per-source parameter -> default value."""
        return {p.name: p.default for p in self.params if p.per_source}

    @property
    def globals(self) -> dict[str, Any]:
        """Global parameter -> default value."""
        return {p.name: p.default for p in self.params if not p.per_source}

    @property
    def random(self) -> bool:
        """Takes ``draws``."""
        return self.family is not None and self.family.random

    @property
    def searchable(self) -> bool:
        """A value of the method gene: a task-vector method over any number of sources, or a method that takes
        calibration statistics (RegMean, Fisher: a run computes them once per source, in its statistics folder)."""
        return self.family is not None or self.task_vector or self.statistics is not None

    def param(self, name: str) -> Param:
        for p in self.params:
            if name in (p.name, p.recipe_name):
                return p
        takes = ", ".join(p.recipe_name for p in self.params) or "none"
        raise EvomergeError(f"method '{self.name}' has no parameter '{name}' (it takes: {takes})")

    def validate(self, n_sources: int, per_source: Mapping[str, Sequence[float]], params: Mapping[str, Any]) -> None:
        """Raise EvomergeError naming the first parameter that does not fit this method."""
        if n_sources < self.min_sources or (self.max_sources is not None and n_sources > self.max_sources):
            want = (f"exactly {self.min_sources}" if self.min_sources == self.max_sources
                    else f"at least {self.min_sources}")
            raise EvomergeError(f"method '{self.name}' needs {want} source model(s), got {n_sources}")
        for key, values in per_source.items():
            param = self.param(key)
            if not param.per_source:
                raise EvomergeError(f"'{key}' of method '{self.name}' is one value for all sources, not one per source")
            if len(values) != n_sources:
                raise EvomergeError(f"'{key}' has {len(values)} value(s) but there are {n_sources} source(s): give one "
                                    "per source")
            for v in values:
                _check_value(self.name, param, v)
        for key, value in params.items():
            param = self.param(key)
            if param.per_source:
                raise EvomergeError(f"'{key}' of method '{self.name}' takes one value per source: give it under each "
                                    "source")
            _check_value(self.name, param, value)

    def __call__(self, base: Tensor | None, sources: Sequence[Tensor], **params: Any) -> Tensor:
        """The method with every declared parameter that ``params`` leaves out at its default."""
        full = {p.name: [p.default] * len(sources) if p.per_source else p.default for p in self.params}
        return self.fn(base, sources, **{**full, **params})


def _check_value(method: str, param: Param, value: Any) -> None:
    if isinstance(param.default, bool):
        if not isinstance(value, bool):
            raise EvomergeError(f"{method}: '{param.recipe_name}' must be true or false, got {value!r}")
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise EvomergeError(f"{method}: '{param.recipe_name}' must be a number, got {value!r}")
    if param.domain is not None and not param.domain.contains(float(value)):
        raise EvomergeError(f"{method}: '{param.recipe_name}' = {value} is outside {param.domain.describe()}")
    if not math.isfinite(float(value)):
        raise EvomergeError(f"{method}: '{param.recipe_name}' must be finite, got {value}")
    if isinstance(param.default, int) and not float(value).is_integer():
        raise EvomergeError(f"{method}: '{param.recipe_name}' must be a whole number, got {value!r}")


_REGISTRY: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    if method.name in _REGISTRY:
        raise ValueError(f"merge method '{method.name}' registered twice")
    _REGISTRY[method.name] = method
    return method


def get_method(name: str) -> MergeMethod:
    _load_builtin_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EvomergeError(f"unknown merge method '{name}' (known: {', '.join(sorted(_REGISTRY))})") from None


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def _load_builtin_methods() -> None:
    import evomerge.merge.methods  # noqa: F401  (registers on import)
