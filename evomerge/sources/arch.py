"""What the model class knows, from transformers on the meta device (no memory, no weights).

- ``model_keys``: the state-dict keys of the class a folder's config names. Checkpoint keys outside
  them (old checkpoints' rotary ``inv_freq`` buffers, say) are what ``from_pretrained`` drops as
  unexpected, so the pool drops them too (``used_tensors``).
- ``infos_from_config``: every tensor's shape and dtype from config.json fields alone — the shape a
  memory plan needs when the model folders are not on this machine (``sources.shape``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from evomerge.errors import EvomergeError
from evomerge.sources.store import TensorInfo

_KNOWN_KEYS: dict[tuple[Path, bool], set[str] | None] = {}


def model_keys(folder: Path, trust_remote_code: bool = False) -> set[str] | None:
    """The state-dict keys of the model class a folder's config names; None when transformers cannot build
    that class here (then every checkpoint key counts). Built once per folder and process."""
    key = (folder, trust_remote_code)
    if key not in _KNOWN_KEYS:
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
            _KNOWN_KEYS[key] = set(_meta_model(config, trust_remote_code).state_dict())
        except Exception:  # an architecture transformers does not know
            _KNOWN_KEYS[key] = None
    return _KNOWN_KEYS[key]


def used_tensors(base: Path, folder: Path, infos: dict[str, TensorInfo], trust_remote_code: bool) -> dict[str, TensorInfo]:
    """The tensors of ``folder``'s checkpoint that the base's model class uses; a note names what is dropped."""
    known = model_keys(base, trust_remote_code)
    extra = sorted(set(infos) - known) if known is not None else []
    if extra:
        print(f"evomerge: note: {folder}: ignoring {len(extra)} checkpoint tensor(s) that the model class does not "
              f"use (e.g. {extra[0]}), as transformers does when it loads the model", file=sys.stderr)
    return {n: i for n, i in infos.items() if n not in extra}


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
                            f"({type(e).__name__}: {e}); give the base's config.json fields, model_type included") from None
    dtype = _dtype(fields.get("dtype", fields.get("torch_dtype")))
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    return {name: TensorInfo(dtype if t.is_floating_point() else t.dtype, tuple(t.shape))
            for name, t in model.state_dict().items() if name not in tied}


def _meta_model(config: Any, trust_remote_code: bool) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def _dtype(name: Any) -> torch.dtype:
    if name is None:
        return torch.float32  # transformers' default for a config without one
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise EvomergeError(f"config field 'sources.shape.dtype' must name a torch dtype such as bfloat16, got {name!r}")
    return value
