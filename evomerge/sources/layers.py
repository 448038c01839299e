"""Layer groups from tensor names, for any decoder family.

Genes are per layer group, so every tensor must land in exactly one group: ``embed`` (token and
position embeddings), ``layers.<i>`` (or ``layers.<a>-<b>`` when several consecutive layers share
genes), ``final_norm`` and ``lm_head``. Names are read, not guessed from the architecture's class, so
llama, mistral, qwen2, gemma, phi, phi3, gpt2, gpt_neox and most other decoders work unchanged:

- a layer is ``<prefix>.{layers,h,blocks,block,layer}.<i>.`` (``model.layers.3.``, ``transformer.h.3.``);
- outside the layers, known names (``embed_tokens``, ``wte``, ``wpe``, ``embed_in``, ``ln_f``,
  ``final_layer_norm``, ``embed_out``, ...) and then keywords (``embed``, ``norm``, ``head``) decide.

With tied embeddings the checkpoint has no ``lm_head.weight``, hence no ``lm_head`` group.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Literal, Mapping

from evomerge.errors import EvomergeError

ParamKind = Literal["attention", "mlp", "other"]
KINDS: tuple[ParamKind, ...] = ("attention", "mlp", "other")  # a layer group narrowed to a kind: "layers.3:mlp"

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks|block|layer)\.(\d+)\.")

# Top-level modules by their last dotted component before the parameter name (``wte`` in
# ``transformer.wte.weight``). Exact names first, keywords as the generic fallback.
_EMBED = {"embed_tokens", "wte", "wpe", "embed_in", "embed_positions", "word_embeddings", "position_embeddings"}
_FINAL_NORM = {"norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f", "final_norm"}
_LM_HEAD = {"lm_head", "embed_out", "output"}

# Module names inside a layer that hold attention or MLP parameters, across families.
_ATTENTION = {"self_attn", "attn", "attention", "self_attention", "cross_attn"}
_MLP = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe", "fc1", "fc2"}  # OPT: fc1/fc2 sit in the layer

_GROUP_RANK = {"embed": 0, "layers": 1, "final_norm": 2, "lm_head": 3}
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers")  # where decoder configs give their layer count


def layer_index(name: str) -> int | None:
    """The decoder layer a tensor belongs to, or None for tensors outside the layers."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def renumbered(name: str, index: int) -> str:
    """The name of a layer tensor moved to layer ``index`` (``model.layers.3.mlp...`` -> ``model.layers.7.mlp...``)."""
    match = _LAYER.search(name)
    if match is None:
        raise ValueError(f"{name} is not a layer tensor")
    return f"{name[:match.start(1)]}{index}{name[match.end(1):]}"


def num_layers(config: Mapping[str, Any], names: Iterable[str]) -> int:
    """Number of decoder layers: from the config when it says, else from the tensor names."""
    for key in LAYER_COUNT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    indices = [i for i in map(layer_index, names) if i is not None]
    return max(indices) + 1 if indices else 0


def group_of(name: str, n_layers: int, granularity: int = 1) -> str:
    """The layer group of a tensor; ``granularity`` consecutive layers share one group."""
    _check_granularity(granularity)
    index = layer_index(name)
    if index is None:
        return top_level_group(name)
    if index >= n_layers:
        raise EvomergeError(
            f"tensor '{name}' is in layer {index} but the model has {n_layers} layers: is config.json from another "
            "model?"
        )
    if granularity == 1:
        return f"layers.{index}"
    first = index - index % granularity
    return f"layers.{first}-{min(first + granularity, n_layers) - 1}"


def layer_groups(names: Iterable[str], n_layers: int, granularity: int = 1) -> list[str]:
    """The groups present in ``names``, in model order: embed, layers..., final_norm, lm_head."""
    groups = {group_of(n, n_layers, granularity) for n in names}
    return sorted(groups, key=_group_order)


def param_kind(name: str) -> ParamKind:
    """Whether a layer tensor is attention, MLP, or anything else (norms, embeddings, heads)."""
    if layer_index(name) is None:
        return "other"
    parts = set(name.split("."))
    if parts & _ATTENTION:
        return "attention"
    if parts & _MLP:
        return "mlp"
    return "other"


def top_level_group(name: str) -> str:
    parts = name.split(".")
    module = parts[-2] if len(parts) > 1 else parts[0]
    for group, known in (("embed", _EMBED), ("final_norm", _FINAL_NORM), ("lm_head", _LM_HEAD)):
        if module in known:
            return group
    lowered = name.lower()
    for group, keyword in (("embed", "embed"), ("final_norm", "norm"), ("lm_head", "head")):
        if keyword in lowered:
            return group
    raise EvomergeError(
        f"cannot place tensor '{name}' in a layer group (embed, layers.<i>, final_norm, lm_head): "
        "this architecture's naming is not known to evomerge; please report it"
    )


def _group_order(group: str) -> tuple[int, int]:
    kind, _, rest = group.partition(".")
    return _GROUP_RANK[kind], int(rest.split("-")[0]) if rest else -1


def _check_granularity(granularity: int) -> None:
    if not isinstance(granularity, int) or isinstance(granularity, bool) or granularity < 1:
        raise EvomergeError(f"layer_granularity must be a whole number >= 1, got {granularity!r}")
