"""The base model and its fine-tunes, loaded from Hugging Face folders and checked compatible.

Everything a merge needs from disk is read here, once, and checked before any search work starts;
errors name the first offending model and tensor, and say how to fix it.

Policies:
- Weights are read from safetensors (``model.safetensors`` or shards listed in
  ``model.safetensors.index.json``). Pickle checkpoints (``.bin``/``.pt``) can run code when
  unpickled, so they are refused unless ``allow_pickle``; even then only tensors are unpickled
  (``torch.load(weights_only=True)``).
- A config whose ``auto_map`` points at custom modeling code is refused unless
  ``trust_remote_code``; nothing is ever downloaded.
- All models must share the base's ``model_type``, ``architectures``, tensor names and shapes.
- Different vocabulary sizes are an error, not silently padded or cut: rows of different
  vocabularies mean different tokens, so the user resizes first (``model.resize_token_embeddings``
  on the source, with the base's tokenizer) and decides what new rows hold.
- Dtypes may differ (merge math runs in float32). Non-floating tensors (integer buffers) are not
  merged: ``is_mergeable`` is False and they are taken from the base unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.sources.layers import num_layers

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class ModelSource:
    """One model folder: its config, its tensors (on CPU) and a SHA-256 of its weight files."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, Tensor]
    fingerprint: str

    @classmethod
    def load(cls, path: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelSource:
        return _Folder.open(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code).load()


@dataclass(frozen=True)
class SourcePool:
    """The base (θ0) and the K sources (θ_k), checked to share one architecture and tensor layout."""

    base: ModelSource
    sources: list[ModelSource]
    tensor_names: list[str]  # the base's names, layers in numeric order
    trust_remote_code: bool = False

    @classmethod
    def load(
        cls,
        base: str | Path,
        sources: Sequence[str | Path],
        *,
        allow_pickle: bool = False,
        trust_remote_code: bool = False,
    ) -> SourcePool:
        if not sources:
            raise EvomergeError("no source models given: list at least one fine-tune of the base to merge")
        folders = _open_compatible(base, sources, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        models = [folder.load() for folder in folders]
        for model in models[1:]:
            _check_tensors(models[0].path, _shapes(models[0].tensors), model.path, _shapes(model.tensors))
        names = sorted(models[0].tensors, key=_natural_key)
        return cls(models[0], models[1:], names, trust_remote_code)

    @property
    def config(self) -> dict[str, Any]:
        return self.base.config

    @property
    def n_layers(self) -> int:
        return num_layers(self.config, self.tensor_names)

    def is_mergeable(self, name: str) -> bool:
        """Floating-point tensors are merged; integer/bool buffers are copied from the base."""
        return self.base.tensors[name].is_floating_point()

    def fingerprints(self) -> dict[str, str]:
        """``{"base:<path>": sha256, "source<k>:<path>": sha256}`` with k from 0, for run logs and model cards."""
        out = {f"base:{self.base.path}": self.base.fingerprint}
        out.update({f"source{k}:{s.path}": s.fingerprint for k, s in enumerate(self.sources)})
        return out


def check_compatible(base: str | Path, sources: Sequence[str | Path], *, allow_pickle: bool = False,
                     trust_remote_code: bool = False) -> None:
    """The checks ``SourcePool.load`` makes, from configs and safetensors headers alone (no tensor is read)."""
    folders = _open_compatible(base, sources, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if any(f.pickled for f in folders):
        return  # a pickle's shapes are only known once it is loaded: SourcePool.load checks them then
    shapes = [f.header_shapes() for f in folders]
    for folder, other in zip(folders[1:], shapes[1:]):
        _check_tensors(folders[0].path, shapes[0], folder.path, other)


def _open_compatible(base: str | Path, sources: Sequence[str | Path], *, allow_pickle: bool, trust_remote_code: bool) -> list["_Folder"]:
    if not sources:
        raise EvomergeError("no source models given: list at least one fine-tune of the base to merge")
    folders = [_Folder.open(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code) for p in [base, *sources]]
    for folder in folders[1:]:
        _check_configs(folders[0], folder)
    return folders


def _shapes(tensors: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in tensors.items()}


@dataclass(frozen=True)
class _Folder:
    """A model folder whose config is read and weight files located, before any tensor is loaded."""

    path: Path
    config: dict[str, Any]
    weight_files: list[Path]
    pickled: bool

    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool, trust_remote_code: bool) -> _Folder:
        folder = Path(path).expanduser().resolve()
        if not folder.is_dir():
            raise EvomergeError(f"model folder {folder} does not exist: give the path of a Hugging Face model folder")
        config = _read_json(folder / "config.json", f"{folder} has no config.json: is it a Hugging Face model folder?")
        if "auto_map" in config and not trust_remote_code:
            raise EvomergeError(
                f"{folder}/config.json needs custom model code (auto_map: {', '.join(config['auto_map'])}): "
                "pass trust_remote_code (--trust-remote-code) only if you trust that code"
            )
        files, pickled = _weight_files(folder)
        if pickled and not allow_pickle:
            raise EvomergeError(
                f"{folder} has only pickle checkpoints ({files[0].name}), which can run code when loaded: "
                "convert them to safetensors, or pass allow_pickle (--allow-pickle) to load their tensors only"
            )
        return cls(folder, config, files, pickled)

    def header_shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape from the safetensors headers."""
        from safetensors import safe_open

        shapes: dict[str, tuple[int, ...]] = {}
        for file in self.weight_files:
            try:
                with safe_open(file, framework="pt") as f:
                    shapes.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
            except Exception as e:  # a damaged header
                raise EvomergeError(f"cannot read tensors from {file}: {e}") from None
        return shapes

    def load(self) -> ModelSource:
        tensors: dict[str, Tensor] = {}
        for file in self.weight_files:
            for name, tensor in _read_tensors(file, self.pickled).items():
                if name in tensors:
                    raise EvomergeError(
                        f"tensor '{name}' is stored twice in {self.path} (again in {file.name}): the checkpoint is damaged"
                    )
                tensors[name] = tensor
        return ModelSource(self.path, self.config, tensors, _sha256(self.weight_files))


def _weight_files(folder: Path) -> tuple[list[Path], bool]:
    """The weight files of a folder and whether they are pickles; safetensors win when both exist."""
    for single, index, pickled in ((SAFETENSORS_FILE, SAFETENSORS_INDEX, False), (PICKLE_FILE, PICKLE_INDEX, True)):
        if (folder / index).is_file():
            return _indexed_files(folder / index), pickled
        if (folder / single).is_file():
            return [folder / single], pickled
    pickles = sorted([*folder.glob("*.bin"), *folder.glob("*.pt")])
    if pickles:
        return pickles, True
    raise EvomergeError(
        f"{folder} has no weights ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX} or a pickle checkpoint): "
        "save the model with save_pretrained (a LoRA adapter must be merged into its base first)"
    )


def _indexed_files(index: Path) -> list[Path]:
    weight_map = _read_json(index, f"{index} is missing").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise EvomergeError(f"{index} has no weight_map: the sharded checkpoint is damaged; save the model again")
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise EvomergeError(f"{index} lists shard {missing[0].name}, which is missing: copy the complete checkpoint")
    return files


def _read_tensors(file: Path, pickled: bool) -> dict[str, Tensor]:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True) if pickled else load_file(file)
    except Exception as e:  # corrupt file, or a pickle holding more than tensors
        raise EvomergeError(f"cannot read tensors from {file}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(t, Tensor) for t in data.values()):
        raise EvomergeError(f"{file} is not a flat name -> tensor checkpoint (a training checkpoint?): save the model's state_dict")
    return data


def _sha256(files: list[Path]) -> str:
    """SHA-256 over the weight files' bytes, in file-name order: identical weights, identical hash."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.name):
        with file.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _check_configs(base: _Folder, other: _Folder) -> None:
    for key in ("model_type", "architectures"):
        if base.config.get(key) != other.config.get(key):
            raise EvomergeError(
                f"{other.path} has {key} {other.config.get(key)!r} but the base {base.path} has {base.config.get(key)!r}: "
                "merge only fine-tunes of the same base architecture"
            )
    want, got = _vocab_size(base.config), _vocab_size(other.config)
    if want != got:
        raise EvomergeError(
            f"{other.path} has vocab_size {got} but the base has {want}: merging across vocabularies is not supported; "
            "resize the source's embeddings to the base's tokenizer first (model.resize_token_embeddings)"
        )


def _vocab_size(config: dict[str, Any]) -> Any:
    return config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))


def _check_tensors(base_path: Path, base: dict[str, tuple[int, ...]], path: Path, other: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(base.keys() - other.keys(), key=_natural_key)
    if missing:
        raise EvomergeError(
            f"{path} lacks tensor '{missing[0]}' that the base has ({len(missing)} missing): "
            "merge only full fine-tunes of the same base (merge LoRA adapters into the model first)"
        )
    extra = sorted(other.keys() - base.keys(), key=_natural_key)
    if extra:
        raise EvomergeError(
            f"{path} has tensor '{extra[0]}' that the base lacks ({len(extra)} extra): "
            "merge only fine-tunes of the same base architecture"
        )
    for name in sorted(base, key=_natural_key):
        if base[name] != other[name]:
            raise EvomergeError(
                f"tensor '{name}' has shape {list(other[name])} in {path} but {list(base[name])} in the base "
                f"{base_path}: merge only fine-tunes of the same base model size"
            )


def _read_json(path: Path, missing: str) -> dict[str, Any]:
    if not path.is_file():
        raise EvomergeError(missing)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvomergeError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise EvomergeError(f"{path} must hold a JSON object")
    return data


def _natural_key(name: str) -> list[int | str]:
    """Sort ``layers.2`` before ``layers.10``; the order is the same on every machine."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_config(path: str | Path) -> dict[str, Any]:
    """A model folder's config.json, without loading weights."""
    folder = Path(path).expanduser().resolve()
    return _read_json(folder / "config.json", f"{folder} has no config.json: is it a Hugging Face model folder?")


def read_tensor_names(path: str | Path, *, allow_pickle: bool = False) -> list[str]:
    """Tensor names from safetensors headers (no tensor is read), in the pool's natural order."""
    from safetensors import safe_open

    files, pickled = _weight_files(Path(path).expanduser().resolve())
    if pickled:
        if not allow_pickle:
            raise EvomergeError(f"{path} has only pickle checkpoints: convert them to safetensors or allow pickle")
        names = [n for f in files for n in _read_tensors(f, True)]
    else:
        names = []
        for file in files:
            with safe_open(file, framework="pt") as f:
                names.extend(f.keys())
    return sorted(names, key=_natural_key)


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a model folder's weight files (the same value ``ModelSource.fingerprint`` records)."""
    files, _ = _weight_files(Path(path).expanduser().resolve())
    return _sha256(files)
