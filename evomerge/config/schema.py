"""One typed loader for every YAML or JSON shape evomerge reads: configs, recipes, strategy options, run records.

A shape is a frozen dataclass. Its fields say everything the loader needs: the allowed keys are the
field names, the types come from the annotations, the defaults from the field defaults, and
constraints from the field's metadata (``ge``, ``gt``, ``le``, ``nonempty`` lists, ``empty`` strings
allowed, ``oneline`` strings: printable, no line break, ``nonfinite``); a shape
with a ``check()`` method returning ``(field, "must ...")`` adds checks that span several fields. ``load(cls, data)``
checks all of it and builds the object; the first problem is an ``EvomergeError`` that names the
field (``config field 'execution.workers' must be an integer >= 1, got 0``). ``dump(obj)`` is the
inverse: plain data that ``load`` reads back to an equal object.

Supported annotations: ``bool``, ``int``, ``float`` (ints accepted), ``str``, ``Path`` (relative paths
resolved against ``root``), ``Literal[...]``, ``X | None``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``Mapping[str, X]``, nested shapes, and ``Any`` (passed through; its owner checks it). Non-finite
floats are refused unless the field's metadata has ``nonfinite: True``; ``dump`` writes them as the
strings ``"nan"``, ``"inf"``, ``"-inf"`` so that JSON stays strict.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union

import yaml

from evomerge.errors import EvomergeError

T = TypeVar("T")
NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
MAX_YAML_VALUES = 100_000  # values a YAML document may hold, aliases expanded: a recipe of 80 layers holds ~7,000


def parse_yaml(text: str, where: str) -> Any:
    """The data of a YAML document, read safely (plain data only) with a bound on what aliases expand to and no
    recursive alias: a hostile file is one EvomergeError naming ``where``, never minutes of work or a RecursionError."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)
    except _Refused as e:
        raise EvomergeError(f"{where} is refused at line {e.line}: {e}; write the values out") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise EvomergeError(f"{where} is not valid YAML{line}: {getattr(e, 'problem', None) or e}") from None
    except RecursionError:
        raise EvomergeError(f"{where} nests too deeply to be read: flatten it") from None


class _Refused(Exception):
    """A document the bounded loader will not build, and the line where it saw why."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting every value as often as aliases repeat it and refusing an alias to a node that
    contains it (PyYAML would build a self-referencing object)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open_anchors: set[str] = set()
        self._expanded: dict[str, int] = {}  # anchor -> values its node holds, aliases expanded
        self._count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        anchor, line = event.anchor, event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            if anchor in self._open_anchors:
                raise _Refused(f"alias *{anchor} refers to a node that contains it", line)
            node = super().compose_node(parent, index)
            self._count += self._expanded.get(anchor, 1)
        else:
            before = self._count
            if anchor is not None:
                self._open_anchors.add(anchor)
            node = super().compose_node(parent, index)
            self._count += 1
            if anchor is not None:
                self._open_anchors.discard(anchor)
                self._expanded[anchor] = self._count - before
        if self._count > MAX_YAML_VALUES:
            raise _Refused(f"its aliases expand to more than {MAX_YAML_VALUES:,} values", line)
        return node


@dataclasses.dataclass(frozen=True)
class _Context:
    what: str  # "config", "recipe", "strategy 'cmaes' option", "run record"
    root: Path | None  # relative paths are resolved against it


def load(cls: type[T], data: Any, *, what: str = "config", where: str = "", root: Path | None = None) -> T:
    """Build the shape ``cls`` from plain data, or raise EvomergeError naming the first bad field."""
    return _value(cls, data, where, {}, _Context(what, root))


def dump(obj: Any) -> Any:
    """Plain data (dicts, lists, str, numbers, None) that ``load`` turns back into an equal object."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): dump(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [dump(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    return obj


def fields_of(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    """Field name -> (field, resolved annotation) of a shape."""
    return _fields(cls)


@functools.cache
def _fields(cls: type) -> dict[str, tuple[dataclasses.Field[Any], Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _shape(cls: type, data: Any, where: str, ctx: _Context) -> Any:
    if not isinstance(data, Mapping):
        raise _error(ctx, where, f"must be a mapping of {', '.join(_fields(cls)) or 'no keys'}", data)
    fields = _fields(cls)
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        section = f" in {ctx.what} section '{where}'" if where else f" in the {ctx.what}"
        raise EvomergeError(f"unknown field '{unknown[0]}'{section} (allowed: {', '.join(fields)})")
    values = {}
    for name, (f, annotation) in fields.items():
        path = f"{where}.{name}" if where else name
        if name in data:
            values[name] = _value(annotation, data[name], path, f.metadata, ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise EvomergeError(f"{ctx.what} field '{path}' is required")
    obj = cls(**values)
    problem = obj.check() if hasattr(obj, "check") else None
    if problem is not None:
        field_name, expected = problem
        raise EvomergeError(f"{ctx.what} field '{where + '.' if where else ''}{field_name}' {expected}")
    return obj


def _value(annotation: Any, data: Any, where: str, meta: Mapping[str, Any], ctx: _Context) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return data
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _shape(annotation, data, where, ctx)
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, data, where, meta, ctx)
    if origin is Literal:
        if data not in args or isinstance(data, bool) != any(isinstance(a, bool) for a in args):
            raise _error(ctx, where, f"must be one of {', '.join(map(str, args))}", data)
        return data
    if origin is tuple:
        return _tuple(args, data, where, meta, ctx)
    if origin in (collections.abc.Mapping, dict) or annotation is dict:
        return _mapping(args[1] if args else Any, data, where, meta, ctx)
    return _scalar(annotation, data, where, meta, ctx)


def _tuple(args: tuple[Any, ...], data: Any, where: str, meta: Mapping[str, Any], ctx: _Context) -> tuple[Any, ...]:
    if not isinstance(data, (list, tuple)):
        raise _error(ctx, where, "must be a list", data)
    if len(args) == 2 and args[1] is Ellipsis:
        if meta.get("nonempty") and not data:
            raise _error(ctx, where, "must be a non-empty list", data)
        return tuple(_value(args[0], v, f"{where}[{i}]", meta, ctx) for i, v in enumerate(data))
    if len(data) != len(args):
        raise _error(ctx, where, f"must be a list of {len(args)} values", data)
    return tuple(_value(a, v, f"{where}[{i}]", meta, ctx) for i, (a, v) in enumerate(zip(args, data, strict=True)))


def _mapping(value_type: Any, data: Any, where: str, meta: Mapping[str, Any], ctx: _Context) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise _error(ctx, where, "must be a mapping", data)
    return {str(k): _value(value_type, v, f"{where}.{k}", meta, ctx) for k, v in data.items()}


def _scalar(annotation: Any, data: Any, where: str, meta: Mapping[str, Any], ctx: _Context) -> Any:
    if annotation is bool:
        if not isinstance(data, bool):
            raise _error(ctx, where, "must be true or false", data)
        return data
    if annotation is int:
        if not isinstance(data, int) or isinstance(data, bool):
            raise _error(ctx, where, "must be an integer" + _bounds_text(meta), data)
        return _bounded(data, where, meta, ctx, "an integer")
    if annotation is float:
        return _float(data, where, meta, ctx)
    if annotation is str:
        if not isinstance(data, str) or not (data or meta.get("empty")):
            raise _error(ctx, where, "must be a non-empty string", data)
        if meta.get("oneline") and not data.isprintable():
            raise _error(ctx, where, "must be one line of printable text (no line break, tab or control character)",
                         data)
        return data
    if annotation is Path:
        if not isinstance(data, (str, Path)) or not str(data):
            raise _error(ctx, where, "must be a path", data)
        path = Path(data).expanduser()
        return path if path.is_absolute() or ctx.root is None else (ctx.root / path).resolve()
    raise TypeError(f"schema: unsupported annotation {annotation!r} at {where}")


def _float(data: Any, where: str, meta: Mapping[str, Any], ctx: _Context) -> float:
    if isinstance(data, str) and meta.get("nonfinite") and data in NONFINITE:
        return NONFINITE[data]
    if not isinstance(data, (int, float)) or isinstance(data, bool):
        raise _error(ctx, where, "must be a number" + _bounds_text(meta), data)
    value = float(data)
    if not math.isfinite(value) and not meta.get("nonfinite"):
        raise _error(ctx, where, "must be a finite number", data)
    return _bounded(value, where, meta, ctx, "a number")


def _bounded(value: float, where: str, meta: Mapping[str, Any], ctx: _Context, kind: str) -> Any:
    ok = all((
        "ge" not in meta or value >= meta["ge"],
        "gt" not in meta or value > meta["gt"],
        "le" not in meta or value <= meta["le"],
    ))
    if not ok:
        raise _error(ctx, where, f"must be {kind}" + _bounds_text(meta), value)
    return value


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = [f"{op} {meta[key]}" for key, op in (("ge", ">="), ("gt", ">"), ("le", "<=")) if key in meta]
    return (" " + " and ".join(parts)) if parts else ""


def _error(ctx: _Context, where: str, expected: str, got: Any) -> EvomergeError:
    name = f"{ctx.what} field '{where}'" if where else ctx.what
    return EvomergeError(f"{name} {expected}, got {got!r}")
