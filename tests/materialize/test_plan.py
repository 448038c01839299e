"""MergePlan: a recipe applied tensor by tensor, overrides by layer group."""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.materialize.plan import MergePlan
from evomerge.recipes.recipe import GroupSpec, Recipe
from evomerge.sources.pool import SourcePool


def ta_recipe(family: dict[str, Path], groups: dict[str, GroupSpec] | None = None) -> Recipe:
    default = GroupSpec("task_arithmetic", {"weight": (0.5, 0.25)}, {"lam": 1.0})
    return Recipe(base=family["base"], sources=(family["a"], family["b"]), default=default, groups=groups or {})


def test_task_arithmetic_plan_matches_float64_math(tiny_family: dict[str, Path]) -> None:
    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    merged = MergePlan.build(ta_recipe(tiny_family), pool).materialize(pool)
    for name, out in merged.items():
        b = pool.base.tensors[name].double()
        want = (b + 0.5 * (pool.sources[0].tensors[name].double() - b)
                + 0.25 * (pool.sources[1].tensors[name].double() - b))
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-6)


def test_group_override_changes_only_that_group(tiny_family: dict[str, Path]) -> None:
    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    plain = MergePlan.build(ta_recipe(tiny_family), pool).materialize(pool)
    override = GroupSpec("task_arithmetic", {"weight": (2.0, 0.0)}, {"lam": 1.0})
    changed = MergePlan.build(ta_recipe(tiny_family, {"layers.1": override}), pool).materialize(pool)
    for name in plain:
        same = torch.equal(plain[name], changed[name])
        assert same == (".layers.1." not in name), name


def test_unknown_group_is_refused_naming_the_groups(tiny_family: dict[str, Path]) -> None:
    import pytest

    from evomerge.errors import EvomergeError

    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    bogus = GroupSpec("task_arithmetic", {"weight": (1.0, 1.0)}, {})
    with pytest.raises(EvomergeError, match="layers.7"):
        MergePlan.build(ta_recipe(tiny_family, {"layers.7": bogus}), pool)


def test_a_method_that_needs_calibration_statistics_is_refused_without_a_folder_of_them(
        tiny_family: dict[str, Path]) -> None:
    import pytest

    from evomerge.errors import EvomergeError

    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    recipe = Recipe(base=None, sources=(tiny_family["a"], tiny_family["b"]), default=GroupSpec("regmean", {}, {}))
    with pytest.raises(EvomergeError, match="method 'regmean' needs the sources' input Gram matrices of calibration "
                       "data: set 'statistics:'"):
        MergePlan.build(recipe, pool)
