"""Recipes: evomerge and mergekit YAML read into the same Recipe, and back."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.errors import EvomergeError
from evomerge.recipes import load_recipe, recipe_data, to_yaml


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_relative_model_paths_resolve_against_the_recipe_folder(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    r = load_recipe(write(tmp_path / "r" / "x.yaml", {
        "method": "task_arithmetic", "base": "../base",
        "sources": [{"model": "../a", "parameters": {"weight": 1.0}}],
    }))
    assert r.base == (tmp_path / "base").resolve()
    assert r.sources == ((tmp_path / "a").resolve(),)


def test_lambda_is_spelled_lam_inside_and_lambda_in_yaml(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path / "x.yaml", {
        "method": "task_arithmetic", "base": "/b", "sources": [{"model": "/a"}], "parameters": {"lambda": 0.5},
    }))
    assert r.default.params == {"lam": 0.5}
    assert recipe_data(r)["parameters"] == {"lambda": 0.5}


def test_group_override_keeps_unmentioned_defaults(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path / "x.yaml", {
        "method": "ties", "base": "/b",
        "sources": [{"model": "/a", "parameters": {"weight": 1.0, "density": 0.5}},
                    {"model": "/c", "parameters": {"weight": 0.5, "density": 0.5}}],
        "groups": {"layers.1": {"sources": [{"weight": 2.0}, {"weight": 0.0}]}},
    }))
    spec = r.spec_for("layers.1")
    assert spec.source_params == {"weight": (2.0, 0.0), "density": (0.5, 0.5)}
    assert r.spec_for("layers.0") == r.default


def test_written_yaml_reads_back_to_the_same_recipe(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path / "x.yaml", {
        "method": "dare_ties", "base": "/b", "seed": 7, "dtype": "bfloat16",
        "sources": [{"model": "/a", "parameters": {"weight": 1.0, "density": 0.3}}],
        "groups": {"embed": {"method": "task_arithmetic", "parameters": {"lambda": 0.9}}},
    }))
    (tmp_path / "back.yaml").write_text(to_yaml(r))
    assert load_recipe(tmp_path / "back.yaml") == r


def test_group_with_wrong_number_of_sources_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EvomergeError, match="one per source"):
        load_recipe(write(tmp_path / "x.yaml", {
            "method": "task_arithmetic", "base": "/b", "sources": [{"model": "/a"}, {"model": "/c"}],
            "groups": {"layers.0": {"sources": [{"weight": 1.0}]}},
        }))


def test_mergekit_ties_recipe_takes_sources_besides_the_base(tmp_path: Path, tiny_family: dict[str, Path]) -> None:
    r = load_recipe(write(tmp_path / "mk.yaml", {
        "merge_method": "ties", "base_model": str(tiny_family["base"]), "dtype": "float32",
        "models": [{"model": str(tiny_family["base"])},
                   {"model": str(tiny_family["a"]), "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": str(tiny_family["b"]), "parameters": {"weight": 0.5, "density": 0.7}}],
        "parameters": {"normalize": True, "int8_mask": True},
    }))
    assert r.sources == (tiny_family["a"], tiny_family["b"])
    assert r.default.source_params == {"weight": (1.0, 0.5), "density": (0.5, 0.7)}
    assert r.dtype == "float32"


def test_mergekit_gradient_becomes_per_layer_groups(tmp_path: Path, tiny_family: dict[str, Path]) -> None:
    r = load_recipe(write(tmp_path / "mk.yaml", {
        "merge_method": "slerp", "base_model": str(tiny_family["base"]),
        "slices": [{"sources": [{"model": str(tiny_family["base"]), "layer_range": [0, 2]},
                                {"model": str(tiny_family["a"]), "layer_range": [0, 2]}]}],
        "parameters": {"t": [0.0, 1.0]},
    }))
    assert r.default.params["t"] == 0.0
    assert r.spec_for("layers.0").params["t"] == 0.0
    assert r.spec_for("layers.1").params["t"] == 1.0


def test_mergekit_filters_are_refused_with_a_reason(tmp_path: Path, tiny_family: dict[str, Path]) -> None:
    with pytest.raises(EvomergeError, match="filters are not"):
        load_recipe(write(tmp_path / "mk.yaml", {
            "merge_method": "slerp", "base_model": str(tiny_family["base"]),
            "models": [{"model": str(tiny_family["base"])}, {"model": str(tiny_family["a"])}],
            "parameters": {"t": [{"filter": "self_attn", "value": 0.3}, {"value": 0.5}]},
        }))
