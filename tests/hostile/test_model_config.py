"""A base whose config.json does not describe its weights is refused before anything is written: merge writes no
model, search (and --check) makes no run folder, evaluate loads nothing. transformers on the meta device says which
shapes the config gives; the line names the first tensor that differs and both shapes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from .hostile_files import assert_refused, copy_family, recipe_yaml, search_yaml

WIDER = {"hidden_size": 24}
DEEPER = {"num_hidden_layers": 3}
BROADER_MLP = {"intermediate_size": 48}
WIDER_MESSAGE = "tensor 'model.embed_tokens.weight' has shape [32, 16] in the weights of"


def with_config(folder: Path, **fields: Any) -> Path:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return folder


@pytest.fixture
def fam(tmp_path: Path, scored_family: dict[str, Path]) -> dict[str, Path]:
    return copy_family(tmp_path / "models", scored_family)


@pytest.mark.parametrize("fields,fragment", [
    (WIDER, f"{WIDER_MESSAGE}"),
    (DEEPER, "config.json describes tensor 'model.layers.2.self_attn.q_proj.weight' [16, 16] that its weights lack"),
    (BROADER_MLP, "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [32, 16] in the weights of"),
], ids=["wider", "deeper", "broader mlp"])
def test_merge_refuses_a_base_whose_config_does_not_match_its_weights(fields, fragment, fam, tmp_path: Path,
                                                                      capsys) -> None:
    with_config(fam["base"], **fields)
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    line = assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys, fragment, *fam.values(),
                          recipe)
    assert str(fam["base"]) in line
    assert not (tmp_path / "out").exists()


def test_the_line_gives_both_shapes(fam, tmp_path: Path, capsys) -> None:
    with_config(fam["base"], **WIDER)
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    line = assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys, WIDER_MESSAGE,
                          *fam.values(), recipe)
    assert line.endswith("but its config.json gives [32, 24]: give the model the config.json it was saved with")


@pytest.mark.parametrize("check", [True, False], ids=["search --check", "search"])
def test_search_refuses_it_before_a_run_folder_exists(check: bool, fam, tmp_path: Path, capsys) -> None:
    with_config(fam["base"], **WIDER)
    config = search_yaml(tmp_path / "cfg", fam)
    argv = ["search", str(config), "--run-dir", str(tmp_path / "run"), *(["--check"] if check else [])]
    assert_refused(argv, capsys, WIDER_MESSAGE, *fam.values(), config)
    assert not (tmp_path / "run").exists()


def test_evaluate_refuses_it_before_transformers_loads_it(fam, capsys) -> None:
    with_config(fam["a"], **DEEPER)
    argv = ["evaluate", str(fam["a"]), "--tasks", "tiny_rev", "--task-path", str(fam["tasks"])]
    assert_refused(argv, capsys, "describes tensor 'model.layers.2.self_attn.q_proj.weight'", *fam.values())


def test_a_checkpoint_whose_names_transformers_converts_is_compared_by_shape_only(tmp_path: Path) -> None:
    """transformers 5 saves Mixtral's experts one by one and fuses them when loading: the fused parameters are not
    'missing', but a shape the config contradicts on a shared name still is refused."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from evomerge.errors import EvomergeError
    from evomerge.sources.folder import check_loadable

    config = MixtralConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, num_key_value_heads=2, num_local_experts=2)
    MixtralForCausalLM(config).save_pretrained(tmp_path / "moe")
    check_loadable(tmp_path / "moe")
    wider = with_config(shutil.copytree(tmp_path / "moe", tmp_path / "wider"), hidden_size=24)
    with pytest.raises(EvomergeError, match=r"'model.embed_tokens.weight' has shape \[32, 16\] .* gives \[32, 24\]"):
        check_loadable(wider)
