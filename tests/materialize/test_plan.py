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


def test_each_data_dependent_method_of_a_recipe_gets_its_own_kind_of_statistics(tiny_family: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    from evomerge.materialize.statistics import source_statistics
    from evomerge.merge.registry import get_method

    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    g = torch.Generator().manual_seed(0)
    for k, source in enumerate(pool.sources):
        fishers = {n: torch.rand(t.shape, generator=g) for n, t in source.tensors.items() if t.is_floating_point()}
        grams = {n: torch.eye(t.shape[1]) * (k + 1) for n, t in source.tensors.items() if n.endswith("proj.weight")}
        source_statistics(tmp_path, "fisher", k, source.fingerprint, "data", lambda f=fishers: f)
        source_statistics(tmp_path, "gram", k, source.fingerprint, "data", lambda f=grams: f)
    recipe = Recipe(base=None, sources=(tiny_family["a"], tiny_family["b"]), default=GroupSpec("fisher", {}, {}),
                    groups={"layers.0": GroupSpec("regmean", {}, {})}, statistics=tmp_path)
    plan = MergePlan.build(recipe, pool)
    assert sorted(plan.statistics) == ["fisher", "gram"]
    merged = plan.materialize(pool)
    linear = [n for n in merged if n.endswith("proj.weight")]
    assert any(".layers.0." in n for n in linear) and any(".layers.0." not in n for n in linear)
    for name in linear:
        sources = [s.tensors[name] for s in pool.sources]
        if ".layers.0." in name:
            want = get_method("regmean")(None, sources, grams=plan.statistics["gram"].of(name))
        else:
            want = get_method("fisher")(None, sources, fishers=plan.statistics["fisher"].of(name))
        assert torch.equal(merged[name], want.to(merged[name].dtype)), name
