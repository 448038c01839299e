"""Merge-method registry: a method is one typed function, registered by name.

A method declares its parameters once, in its signature: keyword-only arguments listed in
``per_source`` take one value per source model (e.g. ``weight``, ``density``); every other
keyword-only argument with a default is a global parameter (e.g. ``lam``, ``t``). A method that
takes ``draws`` consumes uniform random numbers (DARE, DELLA), supplied by the caller so the
function itself stays pure. Recipes, genomes and ``--help`` read the declaration from here.

Calling convention::

    method.fn(base, sources, weight=[...], density=[...], lam=1.0, draws=[...]) -> Tensor

``base`` is the base tensor (``None`` for methods that do not use one), ``sources`` the source
tensors, all of one shape. Math runs in float32, or float64 when the inputs are float64; the
caller casts the result to the output dtype once.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from torch import Tensor

from evomerge.errors import EvomergeError

# Recipe spelling -> Python argument name (``lambda`` is a Python keyword).
ALIASES = {"lambda": "lam"}


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
        left = "(" if self.low_open else "["
        return f"{left}{self.low:g}, {self.high:g}]"


# Parameters with a restricted range; any other numeric parameter may take any finite value.
DOMAINS: dict[str, Domain] = {
    "density": Domain(0.0, 1.0, low_open=True),
    "t": Domain(0.0, 1.0),
    "epsilon": Domain(0.0, 1.0),
    "gamma": Domain(0.0, 1.0),
}


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: Callable[..., Tensor]
    per_source: Mapping[str, float]  # per-source parameter -> default value
    globals: Mapping[str, Any]  # global parameter -> default value
    needs_base: bool
    min_sources: int
    max_sources: int | None
    random: bool = field(default=False)  # takes ``draws``
    doc: str = ""

    def validate(self, n_sources: int, per_source: Mapping[str, Sequence[float]], params: Mapping[str, Any]) -> None:
        """Raise EvomergeError naming the first parameter that does not fit this method."""
        if n_sources < self.min_sources or (self.max_sources is not None and n_sources > self.max_sources):
            want = f"exactly {self.min_sources}" if self.min_sources == self.max_sources else f"at least {self.min_sources}"
            raise EvomergeError(f"method '{self.name}' needs {want} source model(s), got {n_sources}")
        for key, values in per_source.items():
            if key not in self.per_source:
                raise EvomergeError(
                    f"method '{self.name}' has no per-source parameter '{key}' (it takes: {', '.join(self.per_source) or 'none'})"
                )
            if len(values) != n_sources:
                raise EvomergeError(f"'{key}' has {len(values)} value(s) but there are {n_sources} source(s): give one per source")
            for v in values:
                _check_value(self.name, key, v)
        for key, value in params.items():
            if key not in self.globals:
                raise EvomergeError(
                    f"method '{self.name}' has no parameter '{key}' (it takes: {', '.join(self.globals) or 'none'})"
                )
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                _check_value(self.name, key, value)

    def __call__(self, base: Tensor | None, sources: Sequence[Tensor], **params: Any) -> Tensor:
        return self.fn(base, sources, **params)


def _check_value(method: str, key: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise EvomergeError(f"{method}: '{key}' must be a number, got {value!r}")
    domain = DOMAINS.get(key)
    if domain is not None and not domain.contains(float(value)):
        raise EvomergeError(f"{method}: '{key}' = {value} is outside {domain.describe()}")
    if domain is None and not math.isfinite(float(value)):
        raise EvomergeError(f"{method}: '{key}' must be finite, got {value}")


_REGISTRY: dict[str, MergeMethod] = {}


def register(
    name: str,
    *,
    per_source: Sequence[str] = (),
    needs_base: bool = True,
    min_sources: int = 1,
    max_sources: int | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register ``fn`` as merge method ``name``; parameters come from its signature."""

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        sig = inspect.signature(fn)
        kw = {p.name: p for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        missing = [k for k in per_source if k not in kw]
        if missing:
            raise TypeError(f"{fn.__name__}: per-source parameters {missing} are not keyword-only arguments")
        per = {k: (kw[k].default if kw[k].default is not inspect.Parameter.empty else 1.0) for k in per_source}
        glob = {
            k: p.default
            for k, p in kw.items()
            if k not in per_source and k != "draws" and p.default is not inspect.Parameter.empty
        }
        if name in _REGISTRY:
            raise ValueError(f"merge method '{name}' registered twice")
        _REGISTRY[name] = MergeMethod(
            name=name,
            fn=fn,
            per_source=per,
            globals=glob,
            needs_base=needs_base,
            min_sources=min_sources,
            max_sources=max_sources,
            random="draws" in kw,
            doc=(inspect.getdoc(fn) or "").split("\n")[0],
        )
        return fn

    return wrap


def get_method(name: str) -> MergeMethod:
    _load_builtin_methods()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EvomergeError(f"unknown merge method '{name}' (known: {', '.join(sorted(_REGISTRY))})") from None


def method_names() -> list[str]:
    _load_builtin_methods()
    return sorted(_REGISTRY)


def canonical_param(key: str) -> str:
    """Map a recipe key (``lambda``) to its argument name (``lam``)."""
    return ALIASES.get(key, key)


def _load_builtin_methods() -> None:
    import evomerge.merge.methods  # noqa: F401  (registers on import)
