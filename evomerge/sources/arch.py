"""What the model class knows, from transformers on the meta device (no memory, no weights).

- ``class_tensors``: the state-dict keys and shapes of the class a folder's config names. Checkpoint
  keys outside them (old checkpoints' rotary ``inv_freq`` buffers, say) are what ``from_pretrained``
  drops as unexpected, so the pool drops them too; a shape that differs from the config's, or a
  parameter the weights lack, is refused before anything is written (``used_tensors``).
- ``infos_from_config``: every tensor's shape and dtype from config.json fields alone — the shape a
  memory plan needs when the model folders are not on this machine (``sources.shape``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from evomerge.errors import EvomergeError
from evomerge.sources.store import TensorInfo


@dataclass(frozen=True)
class ClassTensors:
    """What the model class a config names holds: every state-dict key's shape, and the parameters a checkpoint must
    give (each tied parameter once; buffers are rebuilt from the config)."""

    shapes: dict[str, tuple[int, ...]]
    required: frozenset[str]


_CLASS_TENSORS: dict[tuple[Path, bool], ClassTensors | None] = {}


def class_tensors(folder: Path, trust_remote_code: bool = False) -> ClassTensors | None:
    """The tensors of the model class a folder's config.json names, shaped as that config says; None when
    transformers cannot build that class here. Built once per folder and process, on the meta device."""
    key = (folder, trust_remote_code)
    if key not in _CLASS_TENSORS:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
            model = _meta_model(config, trust_remote_code)
        except Exception:  # an architecture transformers does not know
            _CLASS_TENSORS[key] = None
        else:
            shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
            _CLASS_TENSORS[key] = ClassTensors(shapes, frozenset(n for n, _ in model.named_parameters()))
    return _CLASS_TENSORS[key]


def used_tensors(base: Path, folder: Path, infos: dict[str, TensorInfo],
                 trust_remote_code: bool) -> dict[str, TensorInfo]:
    """The tensors of ``folder``'s checkpoint that the base's model class uses; a note names what is dropped. The base's
    own weights are checked against the shapes its config.json gives (a mismatch would make an unloadable model);
    sources are checked against the base (``pool._check_tensors``), whose messages fit them better."""
    known = class_tensors(base, trust_remote_code)
    if known is None:
        return infos
    if folder == base:
        _check_against_config(base, infos, known)
    extra = sorted(set(infos) - set(known.shapes))
    if extra:
        print(f"evomerge: note: {folder}: ignoring {len(extra)} checkpoint tensor(s) that the model class does not "
              f"use (e.g. {extra[0]}), as transformers does when it loads the model", file=sys.stderr)
    return {n: i for n, i in infos.items() if n not in extra}


def _check_against_config(base: Path, infos: dict[str, TensorInfo], known: ClassTensors) -> None:
    """Shapes are compared wherever the checkpoint and the class share a name. A parameter the weights lack is refused
    only when every checkpoint name is the class's own: otherwise transformers may build it from names it converts
    when loading (a Mixtral checkpoint's per-expert weights, fused into one tensor by transformers 5)."""
    for name, shape in known.shapes.items():
        if name in infos and infos[name].shape != shape:
            raise EvomergeError(f"tensor '{name}' has shape {list(infos[name].shape)} in the weights of {base} but its "
                                f"config.json gives {list(shape)}: give the model the config.json it was saved with")
    if set(infos) <= set(known.shapes):
        missing = [name for name in known.shapes if name in known.required and name not in infos]
        if missing:
            raise EvomergeError(f"{base}/config.json describes tensor '{missing[0]}' {list(known.shapes[missing[0]])} "
                                "that its weights lack: give the model the config.json it was saved with")


def infos_from_config(config: Mapping[str, Any], trust_remote_code: bool = False) -> dict[str, TensorInfo]:
    """Each checkpoint tensor's dtype and shape for a model described by config.json fields (tied weights once)."""
    from transformers import AutoConfig

    fields = dict(config)
    model_type = fields.pop("model_type", None)
    try:
        built = AutoConfig.for_model(model_type, **fields)
        model = _meta_model(built, trust_remote_code)
    except Exception as e:
        raise EvomergeError(f"config field 'sources.shape' does not describe a model transformers can build "
                            f"({type(e).__name__}: {e}); give the base's config.json fields, model_type "
                            "included") from None
    dtype = _dtype(fields.get("dtype", fields.get("torch_dtype")))
    tied = _tied(model)
    return {name: TensorInfo(dtype if t.is_floating_point() else t.dtype, tuple(t.shape))
            for name, t in model.state_dict().items() if name not in tied}


def _tied(model: torch.nn.Module) -> set[str]:
    """The names under which a tied parameter appears again (lm_head.weight when tied to the embedding)."""
    return {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}


def _meta_model(config: Any, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _dtype(name: Any) -> torch.dtype:
    if name is None:
        return torch.float32  # transformers' default for a config without one
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise EvomergeError("config field 'sources.shape.dtype' must name a torch dtype such as bfloat16, got "
                            f"{name!r}")
    return value
