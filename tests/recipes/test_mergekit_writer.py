"""The mergekit YAML evomerge writes for a recipe: its shape and its refusals.

That mergekit computes the recipe's tensors from it is the differential test's job
(``tests/merge/test_mergekit_oracle.py``); these tests pin down the form, without running mergekit.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomerge.errors import EvomergeError
from evomerge.recipes import GroupSpec, Recipe, load_recipe
from evomerge.recipes.mergekit_yaml import to_mergekit
from evomerge.sources.folder import read_tensor_names

TA = "task_arithmetic"


def spec(method: str = TA, weight: tuple[float, ...] = (1.0, 0.5), **params) -> GroupSpec:
    per_source = {"weight": weight} if method != "slerp" else {}
    if method in ("ties", "della", "pcb"):
        per_source["density"] = params.pop("density", (0.5,) * len(weight))
    return GroupSpec(method, per_source, params)


def recipe(family: dict[str, Path], default: GroupSpec, groups: dict[str, GroupSpec] | None = None) -> Recipe:
    return Recipe(base=family["base"], sources=(family["a"], family["b"]), default=default, groups=groups or {})


def written(r: Recipe, labels: dict[Path, str] | None = None) -> tuple[dict | None, str]:
    text, note = to_mergekit(r, read_tensor_names(r.template), "bfloat16", labels)
    return (None if text is None else yaml.safe_load(text)), note


def test_a_uniform_recipe_is_written_in_models_form_and_reads_back(tiny_family, tmp_path: Path) -> None:
    r = recipe(tiny_family, spec("ties", (0.8, 1.2), density=(0.5, 0.7), lam=0.9))
    data, note = written(r)
    assert "slices" not in data and data["base_model"] == str(tiny_family["base"])
    assert data["models"][1] == {"model": str(tiny_family["b"]), "parameters": {"weight": 1.2, "density": 0.7}}
    assert data["parameters"] == {"lambda": 0.9, "normalize": True}  # defaults written out
    assert data["out_dtype"] == "bfloat16" and "the same merge" in note
    (tmp_path / "mk.yaml").write_text(to_mergekit(r, read_tensor_names(r.template), "float32")[0])
    assert load_recipe(tmp_path / "mk.yaml").default == GroupSpec("ties", r.default.source_params,
                                                                  {"lam": 0.9, "normalize": True})


def test_each_layer_group_is_a_slice_with_the_base_first(tiny_family) -> None:
    r = recipe(tiny_family, spec(), {"embed": spec(weight=(0.2, 0.3)), "layers.0": spec(weight=(0.2, 0.3))})
    data, _ = written(r)
    assert ([[s["model"] for s in sl["sources"]] for sl in data["slices"]]
            == [[str(tiny_family[k]) for k in ("base", "a", "b")]] * 2)
    assert [sl["sources"][0] for sl in data["slices"]] == [{"model": str(tiny_family["base"]), "layer_range": [0, 1]},
                                                          {"model": str(tiny_family["base"]), "layer_range": [1, 2]}]
    # no filter where none is needed
    assert [sl["sources"][1]["parameters"]["weight"] for sl in data["slices"]] == [0.2, 1.0]


def test_a_sliced_yaml_read_back_points_at_the_evomerge_recipe(tiny_family, tmp_path: Path) -> None:
    r = recipe(tiny_family, spec(), {"layers.0": spec(weight=(0.2, 0.3))})
    (tmp_path / "mk.yaml").write_text(to_mergekit(r, read_tensor_names(r.template), "float32")[0])
    with pytest.raises(EvomergeError, match="merge the evomerge_recipe.yaml beside it, or run mergekit-yaml"):
        load_recipe(tmp_path / "mk.yaml")


def test_kinds_and_outer_groups_get_filters_the_rest_one_fallback_value(tiny_family) -> None:
    r = recipe(tiny_family, spec(), {"layers.0:mlp": spec(weight=(0.2, 0.3)), "embed": spec(weight=(0.4, 0.6))})
    data, _ = written(r)
    assert data["slices"][0]["sources"][1]["parameters"]["weight"] == [
        {"filter": "model.embed_tokens.weight", "value": 0.4}, {"filter": ".mlp.", "value": 0.2}, {"value": 1.0}]


def test_global_parameters_equal_in_every_slice_are_written_once(tiny_family) -> None:
    r = recipe(tiny_family, spec(lam=0.8), {"layers.1": spec(weight=(0.2, 0.3), lam=0.8), "lm_head": spec(lam=0.5)})
    data, _ = written(r)
    assert data["parameters"] == {"normalize": False}
    assert [sl.get("parameters") for sl in data["slices"]] == [
        {"lambda": 0.8}, {"lambda": [{"filter": "lm_head.weight", "value": 0.5}, {"value": 0.8}]}]


def test_models_are_named_by_their_labels(tiny_family) -> None:
    labels = {tiny_family["base"]: "org/base", tiny_family["a"]: "org/a", tiny_family["b"]: "org/b"}
    data, _ = written(recipe(tiny_family, spec(), {"layers.1": spec(weight=(0.2, 0.3))}), labels)
    assert data["base_model"] == "org/base"
    assert {s["model"] for sl in data["slices"] for s in sl["sources"]} == {"org/base", "org/a", "org/b"}


def test_della_epsilon_is_narrowed_per_source_to_what_mergekit_accepts(tiny_family) -> None:
    data, note = written(recipe(tiny_family, spec("della", density=(0.1, 0.5), epsilon=0.15)))
    assert [m["parameters"]["epsilon"] for m in data["models"]] == [0.999 * 0.1, 0.15]
    assert "epsilon" not in data["parameters"]
    assert "not these weights" in note and "ε is narrowed" in note


def test_random_drops_are_said_to_be_another_sample(tiny_family) -> None:
    _, note = written(recipe(tiny_family, GroupSpec("dare_ties", {"weight": (1.0, 0.5), "density": (0.5, 0.5)}, {})))
    assert "draws its own random masks" in note and "divides by the keep probability" in note
    assert "\n" not in note


def test_two_methods_get_no_yaml_and_a_reason(tiny_family) -> None:
    data, note = written(recipe(tiny_family, spec(), {"layers.1": spec("ties")}))
    assert data is None and note.startswith("no mergekit.yaml: mergekit applies one merge method")


def test_a_method_mergekit_lacks_gets_no_yaml_and_is_named(tiny_family) -> None:
    data, note = written(recipe(tiny_family, spec("tsvm")))
    assert data is None and note == "no mergekit.yaml: mergekit has no method matching evomerge's 'tsvm'."
    _, note = written(recipe(tiny_family, spec(), {"layers.1": spec("pcb", density=(0.2, 0.3))}))
    assert "(mergekit has no method matching pcb)" in note


def test_kinds_that_filters_cannot_tell_apart_get_no_yaml(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"num_hidden_layers": 1}))
    names = ["model.layers.0.block.self_attn.w", "model.layers.0.block.mlp.w"]
    save_file({n: torch.zeros(2) for n in names}, folder / "model.safetensors")
    r = Recipe(base=folder, sources=(folder, folder), default=spec(), groups={"layers.0:mlp": spec(weight=(0.2, 0.3))})
    text, note = to_mergekit(r, names, "float32")
    assert text is None and "cannot single out" in note
