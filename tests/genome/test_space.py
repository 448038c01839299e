"""GenomeSpace: the unit box <-> per-group merge specs, and the genome's content key."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.genome.space import GenomeSpace

GROUPS = ["embed", "layers.0", "layers.1", "final_norm", "lm_head"]


def space(**kw) -> GenomeSpace:
    args = dict(base=Path("/b"), sources=[Path("/s0"), Path("/s1")], methods=["ties"],
                bounds={"weight": (0.0, 2.0), "density": (0.2, 1.0)})
    args.update(kw)
    return GenomeSpace(GROUPS, **args)


def test_dimension_is_groups_times_sources_times_per_source_params() -> None:
    assert space().dim == len(GROUPS) * 2 * 2  # weight and density per source


def test_split_by_kind_triples_the_layer_units_only() -> None:
    s = space(split_by_kind=True)
    assert s.dim == (3 * 2 + 3) * 2 * 2  # layers.0 and layers.1 split in three; embed, final_norm, lm_head whole
    assert "embed:attention" not in s.units and "layers.0:mlp" in s.units


def test_decoding_maps_the_box_onto_the_bounds() -> None:
    s = space()
    specs = s.decode([0.0] * s.dim)
    assert specs["layers.0"].source_params == {"density": (0.2, 0.2), "weight": (0.0, 0.0)}
    specs = s.decode([1.0] * s.dim)
    assert specs["lm_head"].source_params == {"density": (1.0, 1.0), "weight": (2.0, 2.0)}


def test_decoding_clamps_points_outside_the_box() -> None:
    s = space()
    assert s.decode([1.7] * s.dim) == s.decode([1.0] * s.dim)


def test_encode_then_decode_gives_the_values_back() -> None:
    s = space()
    specs = s.decode(s.encode(weight=[1.5, 0.25], density=[0.6, 1.0]))
    for spec in specs.values():
        assert spec.source_params["weight"] == pytest.approx((1.5, 0.25))
        assert spec.source_params["density"] == pytest.approx((0.6, 1.0))


def test_several_methods_add_a_categorical_gene_per_unit() -> None:
    s = space(methods=["task_arithmetic", "ties"])
    assert s.dim == len(GROUPS) * (1 + 2 * 2)
    x = s.encode(method="task_arithmetic", weight=[1.0, 1.0], density=[0.5, 0.5])
    specs = s.decode(x)
    assert {spec.method for spec in specs.values()} == {"task_arithmetic"}
    assert "density" not in specs["embed"].source_params  # task arithmetic takes no density


def test_recipe_spells_out_every_group() -> None:
    s = space(parameters={"lambda": 0.9}, seed=3)
    recipe = s.to_recipe(s.encode(weight=[1.0, 0.5], density=[0.5, 0.5]))
    assert set(recipe.groups) == set(GROUPS)
    assert recipe.spec_for("layers.1").params == {"lam": 0.9}
    assert recipe.seed == 3


def test_key_is_equal_for_equal_merges_and_differs_otherwise() -> None:
    s = space()
    x = s.encode(weight=[1.0, 0.5], density=[0.5, 0.5])
    assert s.key(x) == s.key(list(x))
    y = list(x)
    y[0] = min(1.0, y[0] + 0.01)
    assert s.key(y) != s.key(x)
    assert s.key([1.5] * s.dim) == s.key([1.0] * s.dim)  # same merge after clamping


def test_methods_that_cannot_be_searched_per_layer_are_refused() -> None:
    with pytest.raises(EvomergeError, match="slerp"):
        space(methods=["slerp"])
