"""Compatibility errors: one line that names the first offender and says how to fix it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.sources.pool import SourcePool


def refused(base: Path, source: Path, **kwargs: bool) -> str:
    with pytest.raises(EvomergeError) as info:
        SourcePool.load(base, [source], **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_folder_is_named(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    message = refused(tiny_family["base"], tmp_path / "nowhere")
    assert "nowhere" in message and "does not exist" in message


def test_folder_without_config_is_named(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "noconfig"
    shutil.copytree(tiny_family["a"], folder)
    (folder / "config.json").unlink()
    assert "noconfig has no config.json" in refused(tiny_family["base"], folder)


def test_other_architecture_is_named(tiny_family: dict[str, Path], variant) -> None:
    # Mistral stores the same tensor names as Llama: only the config tells them apart.
    other = variant(config={"model_type": "mistral", "architectures": ["MistralForCausalLM"]})
    message = refused(tiny_family["base"], other)
    assert "model_type 'mistral'" in message and "'llama'" in message


def test_missing_tensor_is_named(tiny_family: dict[str, Path], variant) -> None:
    gone = "model.layers.1.mlp.up_proj.weight"
    source = variant(edit=lambda t: {k: v for k, v in t.items() if k != gone})
    message = refused(tiny_family["base"], source)
    assert f"lacks tensor '{gone}'" in message


def test_base_lacking_a_tensor_its_config_describes_is_named(tiny_family: dict[str, Path], variant) -> None:
    """Before the sources are compared with it: such a base would make an unloadable model."""
    gone = "model.norm.weight"
    base = variant(edit=lambda t: {k: v for k, v in t.items() if k != gone})
    assert f"config.json describes tensor '{gone}' [16] that its weights lack" in refused(base, tiny_family["a"])


def test_extra_tensor_the_model_does_not_use_is_ignored_with_a_note(tiny_family: dict[str, Path], variant,
                                                                    capsys) -> None:
    """As transformers drops unexpected keys (old checkpoints' rotary buffers): one note, then the pool loads."""
    extra = "model.layers.0.self_attn.rotary_emb.inv_freq"
    source = variant(edit=lambda t: {**t, extra: torch.zeros(2)})
    pool = SourcePool.load(tiny_family["base"], [source])
    assert extra not in pool.tensor_names and extra not in pool.sources[0].tensors
    assert (f"ignoring 1 checkpoint tensor(s) that the model class does not use (e.g. {extra})"
            in capsys.readouterr().err)


def test_shape_mismatch_names_tensor_and_both_shapes(tiny_family: dict[str, Path], variant) -> None:
    name = "model.layers.0.mlp.gate_proj.weight"
    source = variant(edit=lambda t: {**t, name: torch.zeros(8, 16)})
    message = refused(tiny_family["base"], source)
    assert f"'{name}'" in message and "[8, 16]" in message and "[32, 16]" in message


def test_vocabulary_size_mismatch_asks_to_resize(tiny_family: dict[str, Path], variant) -> None:
    message = refused(tiny_family["base"], variant(config={"vocab_size": 40}))
    assert "vocab_size 40" in message and "32" in message and "resize" in message


def test_remote_code_config_is_refused_unless_trusted(tiny_family: dict[str, Path], variant) -> None:
    source = variant(config={"auto_map": {"AutoModelForCausalLM": "modeling_x.XForCausalLM"}})
    message = refused(tiny_family["base"], source)
    assert "auto_map" in message and "trust_remote_code" in message
    pool = SourcePool.load(tiny_family["base"], [source], trust_remote_code=True)
    assert pool.trust_remote_code


def test_missing_shard_is_named(sharded_base: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sharded_base, broken)
    shard = sorted(broken.glob("model-*.safetensors"))[1]
    shard.unlink()
    assert f"shard {shard.name}, which is missing" in refused(sharded_base, broken)
