"""Differential tests against mergekit, a dev-only dependency and the oracle here.

Two directions: the same mergekit YAML through ``mergekit-yaml`` and through ``evomerge merge``; and a
recipe with different values in every layer group and parameter kind, merged by evomerge and by
``mergekit-yaml`` on the YAML evomerge writes for it (what ``evomerge export`` puts beside the weights).
Tensors must agree within 1e-5 relative error (L2 norm of the difference over the norm of mergekit's
tensor), tensor by tensor, in float32, and mergekit must write every tensor evomerge writes.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from evomerge.cli import main
from evomerge.merge.registry import get_method
from evomerge.recipes import Recipe, to_yaml
from evomerge.recipes.mergekit_yaml import to_mergekit
from evomerge.recipes.recipe import GroupSpec
from evomerge.sources.folder import read_tensor_names
from evomerge.sources.layers import KINDS


def recipes(base: Path, a: Path, b: Path, c: Path) -> dict[str, dict]:
    m = lambda p, **params: {"model": str(p), **({"parameters": params} if params else {})}  # noqa: E731
    return {
        "linear": {"merge_method": "linear", "models": [m(a, weight=0.6), m(b, weight=0.3), m(c, weight=0.1)]},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(base),
                            "models": [m(a, weight=0.7), m(b, weight=0.5), m(c, weight=-0.2)],
                            "parameters": {"lambda": 0.9}},
        "ties": {"merge_method": "ties", "base_model": str(base),
                 "models": [m(a, weight=1.0, density=0.5), m(b, weight=0.8, density=0.6),
                            m(c, weight=0.5, density=0.3)]},
        "slerp": {"merge_method": "slerp", "base_model": str(base), "models": [m(base), m(a)],
                  "parameters": {"t": 0.35}},
        "model_stock": {"merge_method": "model_stock", "base_model": str(base), "models": [m(a), m(b), m(c)]},
        "nearswap": {"merge_method": "nearswap", "base_model": str(base), "models": [m(a)], "parameters": {"t": 0.03}},
        "sce": {"merge_method": "sce", "base_model": str(base), "models": [m(a), m(b), m(c)],
                "parameters": {"select_topk": 0.6}},
        "karcher": {"merge_method": "karcher", "models": [m(a), m(b), m(c)],
                    "parameters": {"max_iter": 4, "tol": 1e-6}},
        "nuslerp": {"merge_method": "nuslerp", "base_model": str(base), "models": [m(a, weight=0.3), m(b, weight=0.9)],
                    "parameters": {"nuslerp_flatten": False, "nuslerp_row_wise": True}},
        "multislerp": {"merge_method": "multislerp", "base_model": str(base),
                       "models": [m(a, weight=0.5), m(b, weight=1.2), m(c, weight=-0.3)]},
    }


def differential(family: dict[str, Path], method: str, tmp_path: Path, mergekit) -> None:
    recipe = {**recipes(family["base"], family["a"], family["b"], family["c"])[method], "dtype": "float32"}
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    mergekit.run(path, tmp_path / "mk")
    assert main(["merge", str(path), "--out", str(tmp_path / "em")]) == 0
    mergekit.assert_same_tensors(tmp_path / "em", tmp_path / "mk", method)


@pytest.mark.slow
@pytest.mark.parametrize("method",
                         ["linear", "task_arithmetic", "ties", "slerp", "model_stock", "nearswap", "sce", "karcher",
                          "nuslerp", "multislerp"])
def test_evomerge_matches_mergekit_on_tiny_models(method: str, tiny_family, tmp_path: Path, mergekit) -> None:
    differential(tiny_family, method, tmp_path, mergekit)


# not multislerp: mergekit refuses the zoo's tensors that no source changed (evomerge keeps the base's)
@pytest.mark.slow
@pytest.mark.parametrize("method",
                         ["linear", "task_arithmetic", "ties", "slerp", "model_stock", "nearswap", "sce", "karcher",
                          "nuslerp"])
def test_evomerge_matches_mergekit_on_zoo_models(method: str, zoo_dir: Path, tmp_path: Path, mergekit) -> None:
    models = zoo_dir / "models"
    differential({"base": models / "base", "a": models / "rev", "b": models / "sort", "c": models / "up"}, method,
                 tmp_path, mergekit)


# Numeric globals are drawn from (0.2, 0.9) but for these: NearSwap's t is a distance, and the tiny sources lie
# N(0, 0.05²) from their base, so t in (0.01, 0.08) both swaps entries and moves others; Karcher's tolerance is
# small and its step count a whole number; Multi-SLERP's ε stays a guard.
GLOBAL_RANGES = {("nearswap", "t"): (0.01, 0.08), ("karcher", "tol"): (1e-7, 1e-5), ("karcher", "max_iter"): (1, 10),
                 ("multislerp", "eps"): (1e-9, 1e-7)}


def varied_recipe(method: str, family: dict[str, Path], granularity: int = 1) -> Recipe:
    """Different values in every group — embed, each layer group narrowed to each kind, final_norm, lm_head —
    for every per-source parameter and every numeric global one (λ, t, select_topk)."""
    m = get_method(method)
    sources = (family["a"], family["b"], family["c"])[:m.max_sources or 3]
    n_layers = 2
    layer_groups = [f"layers.{i}" for i in range(n_layers)] if granularity == 1 else [f"layers.0-{n_layers - 1}"]
    units = ["embed", *(f"{g}:{k}" for g in layer_groups for k in KINDS), "final_norm", "lm_head"]
    rng = random.Random(method)

    def spec() -> GroupSpec:
        ranges = {"weight": (0.2, 1.5), "density": (0.3, 0.9)}
        per_source = {p: tuple(rng.uniform(*ranges[p]) for _ in sources) for p in m.per_source}
        numeric = {p: v for p, v in m.globals.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        draw = lambda p, v: rng.randint(*GLOBAL_RANGES[method, p]) if isinstance(v, int) else rng.uniform(  # noqa: E731
            *GLOBAL_RANGES.get((method, p), (0.2, 0.9)))
        return GroupSpec(method, per_source, {p: draw(p, v) for p, v in numeric.items()})

    groups = {u: spec() for u in units}
    return Recipe(base=family["base"], sources=sources, default=groups["embed"], groups=groups,
                  layer_granularity=granularity, dtype="float32")


def mergekit_matches_evomerge(recipe: Recipe, tmp_path: Path, mergekit) -> dict:
    """Merge ``recipe`` with evomerge and, from the YAML evomerge writes, with mergekit; return that YAML."""
    (tmp_path / "recipe.yaml").write_text(to_yaml(recipe))
    assert main(["merge", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "em")]) == 0
    text, _ = to_mergekit(recipe, read_tensor_names(recipe.template), "float32")
    assert text is not None
    (tmp_path / "mergekit.yaml").write_text(text)
    mergekit.run(tmp_path / "mergekit.yaml", tmp_path / "mk")
    mergekit.assert_same_tensors(tmp_path / "em", tmp_path / "mk", recipe.default.method)
    return yaml.safe_load(text)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "slerp", "breadcrumbs_ties", "nearswap", "sce",
                                    "karcher", "nuslerp", "multislerp"])
def test_mergekit_yaml_of_a_per_layer_per_kind_recipe_gives_its_tensors(method: str, tiny_family, tmp_path: Path,
                                                                         mergekit) -> None:
    data = mergekit_matches_evomerge(varied_recipe(method, tiny_family), tmp_path, mergekit)
    assert [s["sources"][-1]["layer_range"] for s in data["slices"]] == [[0, 1], [1, 2]]
    assert "filter" in str(data["slices"][0])  # the kinds, and the embeddings, have values of their own


@pytest.mark.slow
@pytest.mark.parametrize("method", ["della", "della_linear", "dare_linear"])
def test_random_drop_methods_at_density_one_give_mergekits_tensors(method: str, tiny_family, tmp_path: Path,
                                                                   mergekit) -> None:
    """d = 1 drops nothing in either tool, so there the random-drop methods are exact: every other value varies."""
    recipe = varied_recipe(method, tiny_family)
    whole = lambda s: replace(s, source_params={**s.source_params, "density": (1.0,) * len(recipe.sources)})  # noqa: E731
    recipe = replace(recipe, default=whole(recipe.default), groups={g: whole(s) for g, s in recipe.groups.items()})
    mergekit_matches_evomerge(recipe, tmp_path, mergekit)


@pytest.mark.slow
def test_mergekit_yaml_of_layer_groups_spans_each_group(tiny_family, tmp_path: Path, mergekit) -> None:
    data = mergekit_matches_evomerge(varied_recipe("ties", tiny_family, granularity=2), tmp_path, mergekit)
    assert [s["sources"][-1]["layer_range"] for s in data["slices"]] == [[0, 2]]


def test_the_comparison_fails_when_mergekit_writes_nothing(tiny_family, tmp_path: Path, mergekit) -> None:
    (tmp_path / "recipe.yaml").write_text(to_yaml(varied_recipe("linear", tiny_family)))
    assert main(["merge", str(tmp_path / "recipe.yaml"), "--out", str(tmp_path / "em")]) == 0
    (tmp_path / "mk").mkdir()
    with pytest.raises(AssertionError, match="mergekit wrote"):
        mergekit.assert_same_tensors(tmp_path / "em", tmp_path / "mk", "linear")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["della", "della_linear"])
def test_mergekit_runs_the_closest_setting_of_a_random_drop_recipe(method: str, tiny_family, tmp_path: Path,
                                                                   mergekit) -> None:
    """DELLA's draws cannot be reproduced, but mergekit takes its YAML, also where evomerge's d ± ε leaves (0, 1)."""
    recipe = varied_recipe(method, tiny_family)
    assert any(d + s.params["epsilon"] >= 1 for s in recipe.specs for d in s.source_params["density"])
    text, _ = to_mergekit(recipe, read_tensor_names(recipe.template), "float32")
    (tmp_path / "mergekit.yaml").write_text(text)
    mergekit.run(tmp_path / "mergekit.yaml", tmp_path / "mk")
    assert set(mergekit.tensors(tmp_path / "mk")) == set(read_tensor_names(recipe.template))
