"""Layer stacking (passthrough slices): mergekit's output tensor for tensor, in mergekit's form and evomerge's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.cli import main
from evomerge.errors import EvomergeError
from evomerge.recipes import LayerStack, load_recipe
from evomerge.sources.layers import renumbered

# a (2 layers) then b's last layer at half scale then a's first layer again: 4 layers
SLICES = [("a", [0, 2], None), ("b", [1, 2], 0.5), ("a", [0, 1], None)]


def mergekit_stack(family: dict[str, Path]) -> dict:
    return {"merge_method": "passthrough", "dtype": "float32", "slices": [
        {"sources": [{"model": str(family[m]), "layer_range": r, **({"parameters": {"scale": s}} if s else {})}]}
        for m, r, s in SLICES]}


def evomerge_stack(family: dict[str, Path]) -> dict:
    return {"method": "passthrough", "dtype": "float32", "slices": [
        {"model": str(family[m]), "layers": r, **({"scale": s} if s else {})} for m, r, s in SLICES]}


def write(folder: Path, data: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def merge(recipe: Path, out: Path) -> Path:
    assert main(["merge", str(recipe), "--out", str(out)]) == 0
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {name: t for f in sorted(folder.glob("*.safetensors")) for name, t in load_file(f).items()}


def test_renumbered_moves_a_tensor_to_another_layer() -> None:
    assert renumbered("model.layers.3.mlp.up_proj.weight", 12) == "model.layers.12.mlp.up_proj.weight"
    assert renumbered("transformer.h.0.attn.c_attn.weight", 5) == "transformer.h.5.attn.c_attn.weight"


def test_both_forms_read_as_the_same_stack(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "mk").mkdir()
    ours = load_recipe(write(tmp_path, evomerge_stack(tiny_family)))
    theirs = load_recipe(write(tmp_path / "mk", mergekit_stack(tiny_family)))
    assert isinstance(ours, LayerStack) and ours == theirs
    assert ours.num_layers == 4 and [(s.model.name, i) for s, i in ours.layer_sources] == [
        ("a", 0), ("a", 1), ("b", 1), ("a", 0)]


@pytest.mark.slow
def test_stack_equals_mergekit_passthrough(tiny_family: dict[str, Path], mergekit, tmp_path: Path) -> None:
    config = write(tmp_path, mergekit_stack(tiny_family))
    mergekit.run(config, tmp_path / "mk")
    ours = merge(config, tmp_path / "ours")
    got, want = tensors(ours), tensors(tmp_path / "mk")
    assert set(got) == set(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name  # a copy: bit for bit
    for key in ("num_hidden_layers", "model_type", "hidden_size"):
        assert json.loads((ours / "config.json").read_text())[key] == json.loads(
            (tmp_path / "mk" / "config.json").read_text())[key]


def test_stacked_model_takes_each_layer_from_its_slice_and_runs(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = merge(write(tmp_path, evomerge_stack(tiny_family)), tmp_path / "stacked")
    got, a, b = tensors(out), tensors(tiny_family["a"]), tensors(tiny_family["b"])
    name = "model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(got[name.format(1)], a[name.format(1)])
    assert torch.equal(got[name.format(2)], b[name.format(1)] * 0.5)
    assert torch.equal(got[name.format(3)], a[name.format(0)])
    assert torch.equal(got["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], a["lm_head.weight"])  # the last slice's model
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 4
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 32)
    assert isinstance(load_recipe(out / "evomerge_recipe.yaml"), LayerStack)  # the written recipe reads back


@pytest.mark.parametrize(("slices", "fragment"), [
    ([{"model": "a", "layers": [0, 3]}], "which has 2: keep the range within [0, 2]"),
    ([{"model": "a", "layers": [1, 1]}], "0 <= start < stop"),
    ([], "slices"),
])
def test_bad_slices_are_one_line(slices: list, fragment: str, tiny_family: dict[str, Path], tmp_path: Path) -> None:
    bad = [{**s, "model": str(tiny_family[s["model"]])} for s in slices]
    with pytest.raises(EvomergeError) as e:
        load_recipe(write(tmp_path, evomerge_stack(tiny_family) | {"slices": bad}))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_mergekit_slice_with_two_models_is_refused(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    two = {"merge_method": "passthrough", "slices": [{"sources": [
        {"model": str(tiny_family[m]), "layer_range": [0, 1]} for m in ("a", "b")]}]}
    with pytest.raises(EvomergeError, match="passthrough takes exactly one model per slice"):
        load_recipe(write(tmp_path, two))


def test_models_of_another_size_are_refused_before_writing(tiny_family: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=24, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "wide")
    recipe = write(tmp_path, {"method": "passthrough", "slices": [{"model": str(tiny_family["a"]), "layers": [0, 2]},
                                                                 {"model": str(tmp_path / "wide"), "layers": [0, 1]}]})
    capsys.readouterr()  # save_pretrained's progress
    assert main(["merge", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "layer 0 of" in err and "stack models of one size" in err and "\n" not in err
    assert not (tmp_path / "out").exists()
