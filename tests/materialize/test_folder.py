"""Export and ``evomerge merge`` write, shard by shard through the fused kernels, the eager reference's tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.materialize.folder import write_merged
from evomerge.materialize.plan import MergePlan
from evomerge.recipes.recipe import GroupSpec, Recipe
from evomerge.sources.pool import ModelSource, SourcePool

RECIPES = [
    GroupSpec("task_arithmetic", {"weight": (0.7, -0.3, 0.5)}, {"lam": 0.9}),
    GroupSpec("ties", {"weight": (1.0, 0.6, 0.4), "density": (0.4, 0.7, 0.2)}, {}),
    GroupSpec("dare_ties", {"weight": (1.0, 0.6, 0.4), "density": (0.4, 0.7, 1.0)}, {"lam": 1.1}),
    GroupSpec("linear", {"weight": (0.5, 0.3, 0.2)}, {}),
]


def family_recipe(family: dict[str, Path], spec: GroupSpec, **changes) -> Recipe:
    # a second method in one model
    override = {"layers.1": GroupSpec("task_arithmetic", {"weight": (0.2, 0.2, 0.2)}, {})}
    return Recipe(base=family["base"], sources=(family["a"], family["b"], family["c"]), default=spec, groups=override,
                  seed=4, **changes)


@pytest.mark.parametrize("spec", RECIPES, ids=lambda s: s.method)
@pytest.mark.parametrize("shard_size", ["1GB", "3KB"], ids=["one-file", "sharded"])
def test_written_tensors_equal_the_eager_reference(tiny_family: dict[str, Path], tmp_path: Path, spec: GroupSpec,
                                                   shard_size: str) -> None:
    recipe = family_recipe(tiny_family, spec)
    pool = SourcePool.load(recipe.base, list(recipe.sources))
    plan = MergePlan.build(recipe, pool)
    out = write_merged(plan, pool, tmp_path / "out", template=recipe.template, shard_size=shard_size)
    assert (len(list(out.glob("model-*.safetensors"))) > 1) == (shard_size == "3KB")
    written = ModelSource.load(out).tensors
    reference = plan.materialize(pool)
    assert written.keys() == reference.keys()
    for name, want in reference.items():
        if spec.method == "linear":  # the fused weighted mean rounds once less than the reference's
            torch.testing.assert_close(written[name], want, rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(written[name], want), name


def test_config_records_the_merged_dtype_and_tokenizer_files_come_from_the_tokenizer_source(
        tiny_family: dict[str, Path], tmp_path: Path) -> None:
    chat = tmp_path / "chat"
    shutil.copytree(tiny_family["c"], chat)
    (chat / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}", "eos_token": "<|eot|>"}))
    (chat / "config.json").write_text(json.dumps({**json.loads((chat / "config.json").read_text()), "eos_token_id": 7}))
    family = {**tiny_family, "c": chat}
    recipe = family_recipe(family, RECIPES[0], dtype="bfloat16", tokenizer_source=chat)
    pool = SourcePool.load(recipe.base, list(recipe.sources))
    out = write_merged(MergePlan.build(recipe, pool), pool, tmp_path / "out", template=recipe.template,
                       tokenizer=recipe.tokenizer_folder)
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == config["torch_dtype"] == "bfloat16" and config["eos_token_id"] == 7
    assert config["hidden_size"] == json.loads((tiny_family["base"] / "config.json").read_text())["hidden_size"]
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"
    assert all(t.dtype == torch.bfloat16 for t in ModelSource.load(out).tensors.values())


def test_a_non_finite_merge_writes_nothing(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    recipe = family_recipe(tiny_family, GroupSpec("task_arithmetic", {"weight": (1e38, 1e38, 1e38)}, {}),
                           dtype="float16")
    pool = SourcePool.load(recipe.base, list(recipe.sources))
    with pytest.raises(EvomergeError, match="NaN/Inf.*nothing was written"):
        write_merged(MergePlan.build(recipe, pool), pool, tmp_path / "out", template=recipe.template)
    assert list(tmp_path.iterdir()) == []
