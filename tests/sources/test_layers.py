"""Layer groups and parameter kinds from real tensor names of each decoder family."""

from __future__ import annotations

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.sources.layers import group_of, layer_groups, layer_index, num_layers, param_kind

SMALL = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2, vocab_size=64)


def family_names(family: str) -> tuple[list[str], dict]:
    """Tensor names as a checkpoint stores them: the state dict, minus lm_head when it is tied."""
    import transformers as tf

    configs = {
        "llama": lambda: tf.LlamaConfig(**SMALL, tie_word_embeddings=False),
        "mistral": lambda: tf.MistralConfig(**SMALL),
        "qwen2": lambda: tf.Qwen2Config(**SMALL),
        "gemma": lambda: tf.GemmaConfig(**SMALL, head_dim=8),  # ties embeddings by default
        "phi": lambda: tf.PhiConfig(**SMALL),
        "phi3": lambda: tf.Phi3Config(**SMALL, pad_token_id=0),
        "gpt2": lambda: tf.GPT2Config(n_embd=16, n_layer=3, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0,
                                      eos_token_id=0),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**SMALL, max_position_embeddings=32, bos_token_id=0, eos_token_id=0),
    }
    config = configs[family]()
    with torch.device("meta"):
        model = tf.AutoModelForCausalLM.from_config(config)
    names = list(model.state_dict())
    if config.tie_word_embeddings:
        names.remove("lm_head.weight")
    return names, config.to_dict()


FAMILIES = ["llama", "mistral", "qwen2", "gemma", "phi", "phi3", "gpt2", "gpt_neox"]
TIED = {"gemma", "gpt2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_splits_into_embed_layers_norm_head(family: str) -> None:
    names, config = family_names(family)
    n = num_layers(config, names)
    assert n == 3
    head = [] if family in TIED else ["lm_head"]
    assert layer_groups(names, n) == ["embed", "layers.0", "layers.1", "layers.2", "final_norm", *head]
    assert layer_groups(names, n, granularity=2) == ["embed", "layers.0-1", "layers.2-2", "final_norm", *head]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_has_attention_and_mlp_in_each_layer(family: str) -> None:
    names, _ = family_names(family)
    for i in range(3):
        kinds = {param_kind(n) for n in names if layer_index(n) == i}
        assert {"attention", "mlp"} <= kinds, (family, i, kinds)
    assert all(param_kind(n) == "other" for n in names if layer_index(n) is None)


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("transformer.wte.weight", "embed"),
        ("transformer.wpe.weight", "embed"),
        ("transformer.ln_f.bias", "final_norm"),
        ("gpt_neox.embed_in.weight", "embed"),
        ("gpt_neox.final_layer_norm.weight", "final_norm"),
        ("embed_out.weight", "lm_head"),
        ("model.final_layernorm.weight", "final_norm"),
        ("h.1.attn.c_attn.weight", "layers.1"),
        ("model.decoder.layers.1.fc1.weight", "layers.1"),
        ("transformer.blocks.1.ffn.up_proj.weight", "layers.1"),
        ("model.custom_embedding.weight", "embed"),
    ],
)
def test_names_of_other_layouts_find_their_group(name: str, group: str) -> None:
    assert group_of(name, n_layers=2) == group


def test_granularity_groups_consecutive_layers_and_last_group_is_shorter() -> None:
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in range(7)]
    assert layer_groups(names, 7, granularity=3) == ["layers.0-2", "layers.3-5", "layers.6-6"]
    assert group_of("model.layers.4.mlp.up_proj.weight", 7, granularity=3) == "layers.3-5"


def test_layer_groups_are_in_numeric_order_past_ten() -> None:
    names = [f"model.layers.{i}.mlp.up_proj.weight" for i in (10, 2, 11, 0, 1, 3, 4, 5, 6, 7, 8, 9)]
    assert layer_groups(names, 12) == [f"layers.{i}" for i in range(12)]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.layers.0.self_attn.q_proj.weight", "attention"),
        ("model.layers.0.self_attn.dense.bias", "attention"),
        ("transformer.h.0.attn.c_proj.weight", "attention"),
        ("gpt_neox.layers.0.attention.dense.weight", "attention"),
        ("model.layers.0.mlp.down_proj.weight", "mlp"),
        ("transformer.h.0.mlp.c_proj.weight", "mlp"),
        ("gpt_neox.layers.0.mlp.dense_4h_to_h.bias", "mlp"),
        ("model.decoder.layers.0.fc1.weight", "mlp"),
        ("model.layers.0.input_layernorm.weight", "other"),
        ("model.embed_tokens.weight", "other"),
        ("lm_head.weight", "other"),
    ],
)
def test_param_kind(name: str, kind: str) -> None:
    assert param_kind(name) == kind


def test_layer_count_comes_from_names_when_the_config_is_silent() -> None:
    assert num_layers({}, ["model.layers.0.a.weight", "model.layers.4.a.weight", "lm_head.weight"]) == 5


def test_layer_beyond_the_config_count_is_an_error() -> None:
    with pytest.raises(EvomergeError, match="layer 5 but the model has 2"):
        group_of("model.layers.5.mlp.up_proj.weight", 2)


def test_unplaceable_name_is_an_error_naming_it() -> None:
    with pytest.raises(EvomergeError, match="'model.mystery.weight'"):
        group_of("model.mystery.weight", 2)


@pytest.mark.parametrize("granularity", [0, -1, 1.5, True])
def test_granularity_must_be_a_positive_whole_number(granularity: object) -> None:
    with pytest.raises(EvomergeError, match="layer_granularity"):
        group_of("model.layers.0.mlp.up_proj.weight", 2, granularity)  # type: ignore[arg-type]
