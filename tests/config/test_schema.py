"""The typed loader: keys, types, defaults and constraints come from the dataclass; dump is its inverse."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping

import pytest

from evomerge.config.schema import dump, load
from evomerge.errors import EvomergeError


@dataclass(frozen=True)
class Inner:
    size: int = field(default=1, metadata={"ge": 1})
    kind: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str
    path: Path | None = None
    inner: Inner = field(default_factory=Inner)
    items: tuple[Inner, ...] = ()
    pair: tuple[float, float] = (0.0, 1.0)
    values: Mapping[str, float] = field(default_factory=dict, metadata={"nonfinite": True})
    flag: bool = False

    def check(self) -> tuple[str, str] | None:
        return ("pair", "must be increasing") if self.pair[0] > self.pair[1] else None


def test_defaults_fill_what_the_data_leaves_out() -> None:
    assert load(Outer, {"name": "x"}) == Outer("x")


def test_nested_shapes_and_lists_of_them_are_built() -> None:
    obj = load(Outer, {"name": "x", "inner": {"size": 3}, "items": [{"kind": "b"}]})
    assert obj.inner == Inner(3) and obj.items == (Inner(1, "b"),)


def test_relative_paths_resolve_against_the_root(tmp_path: Path) -> None:
    assert load(Outer, {"name": "x", "path": "m/base"}, root=tmp_path).path == (tmp_path / "m" / "base").resolve()


def test_dump_reads_back_equal_even_with_non_finite_values() -> None:
    obj = Outer("x", Path("/a"), Inner(2, "b"), (Inner(),), (0.5, 2.0), {"nan": math.nan, "inf": math.inf, "one": 1.0})
    back = load(Outer, dump(obj))
    assert back.values["inf"] == math.inf and math.isnan(back.values["nan"]) and back.path == Path("/a")
    assert dump(back) == dump(obj)


@pytest.mark.parametrize("data, message", [
    ({}, "config field 'name' is required"),
    ({"name": "x", "nmae": 1}, "unknown field 'nmae' in the config (allowed: name, path"),
    ({"name": "x", "inner": {"size": 0}}, "config field 'inner.size' must be an integer >= 1, got 0"),
    ({"name": "x", "inner": {"kind": "c"}}, "config field 'inner.kind' must be one of a, b, got 'c'"),
    ({"name": "x", "items": [{"sise": 1}]}, "unknown field 'sise' in config section 'items[0]'"),
    ({"name": "x", "pair": [1.0]}, "config field 'pair' must be a list of 2 values"),
    ({"name": "x", "pair": [2.0, 1.0]}, "config field 'pair' must be increasing"),
    ({"name": ""}, "config field 'name' must be a non-empty string"),
    ({"name": "x", "inner": [1]}, "config field 'inner' must be a mapping of size, kind"),
    ({"name": "x", "items": {"size": 1}}, "config field 'items' must be a list, got {'size': 1}"),
    ({"name": "x", "values": [1.0]}, "config field 'values' must be a mapping, got [1.0]"),
    ({"name": "x", "values": {"a": "big"}}, "config field 'values.a' must be a number, got 'big'"),
    ({"name": "x", "flag": "yes"}, "config field 'flag' must be true or false, got 'yes'"),
    ({"name": "x", "path": 3}, "config field 'path' must be a path, got 3"),
])
def test_every_mistake_is_one_line_naming_the_field(data: dict, message: str) -> None:
    with pytest.raises(EvomergeError) as info:
        load(Outer, data)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_non_finite_numbers_are_refused_where_not_declared() -> None:
    with pytest.raises(EvomergeError, match="config field 'pair\\[0\\]' must be a finite number"):
        load(Outer, {"name": "x", "pair": [math.nan, 1.0]})
