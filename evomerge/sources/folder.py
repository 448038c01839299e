"""A model folder on disk: its config, weight files (safetensors or, where allowed, pickles), tensor
headers and fingerprint — everything read before (or instead of) loading tensors.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.sources.arch import used_tensors
from evomerge.sources.store import TensorInfo, safetensors_index

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"


@dataclass(frozen=True)
class ModelFolder:
    """A model folder whose config is read and weight files located, before any tensor is loaded."""

    path: Path
    config: dict[str, Any]
    weight_files: list[Path]
    pickled: bool

    @classmethod
    def open(cls, path: str | Path, *, allow_pickle: bool, trust_remote_code: bool) -> ModelFolder:
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

    def index(self) -> tuple[dict[str, TensorInfo], dict[str, Tensor] | None]:
        """Every tensor's dtype, shape and place: from safetensors headers, or by loading the pickles (returned too)."""
        infos: dict[str, TensorInfo] = {}
        loaded: dict[str, Tensor] | None = {} if self.pickled else None
        for file in self.weight_files:
            if loaded is not None:
                tensors = _read_pickle(file)
                loaded.update(tensors)
                found = {n: TensorInfo(t.dtype, tuple(t.shape)) for n, t in tensors.items()}
            else:
                found = safetensors_index(file)
            twice = sorted(found.keys() & infos.keys())
            if twice:
                raise EvomergeError(
                    f"tensor '{twice[0]}' is stored twice in {self.path} (again in {file.name}): the checkpoint is "
                    "damaged"
                )
            infos.update(found)
        return infos, loaded


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
    """The shards an index lists, each a plain file name inside the model folder (never a path out of it)."""
    weight_map = _read_json(index, f"{index} is missing").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise EvomergeError(f"{index} has no weight_map: the sharded checkpoint is damaged; save the model again")
    bad = next((v for v in weight_map.values() if not isinstance(v, str)), None)
    if bad is not None:
        raise EvomergeError(f"{index} maps a tensor to {bad!r}, not a shard file name: the index is damaged")
    files = [_inside(index.parent, name, index) for name in sorted(set(weight_map.values()))]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise EvomergeError(f"{index} lists shard {missing[0].name}, which is missing: copy the complete checkpoint")
    return files


def _inside(folder: Path, name: str, index: Path) -> Path:
    """``folder / name`` where ``name`` is a relative path with no ``..`` whose file, symlinks followed, stays in the
    folder (or, for a Hugging Face cache snapshot, in its repository's ``blobs``); else an error naming the index."""
    relative = Path(name)
    if not name or relative.is_absolute() or ".." in relative.parts or "\\" in name:
        raise EvomergeError(f"{index} lists shard {name!r}, which is not a file name inside {folder}: "
                            "the index is damaged or hostile; save the model again")
    path = folder / relative
    target = path.resolve()
    allowed = [folder.resolve()]
    if allowed[0].parent.name == "snapshots":  # <cache>/models--org--name/snapshots/<rev>/<shard> -> ../../blobs/<sha>
        allowed.append(allowed[0].parent.parent / "blobs")
    if not any(target.is_relative_to(root) for root in allowed):
        raise EvomergeError(f"{index} lists shard {name!r}, a symlink to {target} outside {folder}: "
                            "copy the shard into the model folder")
    return path


def _read_pickle(file: Path) -> dict[str, Tensor]:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or a pickle holding more than tensors
        raise EvomergeError(f"cannot read tensors from {file}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(t, Tensor) for t in data.values()):
        raise EvomergeError(f"{file} is not a flat name -> tensor checkpoint (a training checkpoint?): save the "
                            "model's state_dict")
    return data


def _sha256(files: list[Path]) -> str:
    """SHA-256 over the weight files' bytes, in file-name order: identical weights, identical hash."""
    digest = hashlib.sha256()
    for file in sorted(files, key=lambda f: f.name):
        with file.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


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


def natural_key(name: str) -> list[int | str]:
    """Sort ``layers.2`` before ``layers.10``; the order is the same on every machine."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def read_config(path: str | Path) -> dict[str, Any]:
    """A model folder's config.json, without loading weights."""
    folder = Path(path).expanduser().resolve()
    return _read_json(folder / "config.json", f"{folder} has no config.json: is it a Hugging Face model folder?")


def read_tensor_names(path: str | Path, *, allow_pickle: bool = False) -> list[str]:
    """Tensor names from safetensors headers (no tensor is read), in the pool's natural order."""
    files, pickled = _weight_files(Path(path).expanduser().resolve())
    if pickled and not allow_pickle:
        raise EvomergeError(f"{path} has only pickle checkpoints: convert them to safetensors or allow pickle")
    names = [n for f in files for n in (_read_pickle(f) if pickled else safetensors_index(f))]
    return sorted(names, key=natural_key)


def read_tensor_infos(path: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False,
                      used_by: str | Path | None = None) -> dict[str, TensorInfo]:
    """The dtype and shape of every tensor that the model class of ``used_by`` (default: this folder) uses, from
    the headers alone: what a memory plan needs."""
    folder = ModelFolder.open(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    owner = Path(used_by).expanduser().resolve() if used_by is not None else folder.path
    infos = used_tensors(owner, folder.path, folder.index()[0], trust_remote_code)
    return {name: infos[name] for name in sorted(infos, key=natural_key)}


def check_loadable(path: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> None:
    """What ``from_pretrained`` would trip over with a traceback, refused first with one line: the weight files and
    shard index, every safetensors header, and config.json against the weights' shapes (pickles: the files only)."""
    folder = ModelFolder.open(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if not folder.pickled:
        used_tensors(folder.path, folder.path, folder.index()[0], trust_remote_code)


def weight_bytes(path: str | Path) -> int:
    """Bytes a folder's tensors take in aligned blocks, bounded from its weight files' sizes (no tensor is read)."""
    files, _ = _weight_files(Path(path).expanduser().resolve())
    # the files' headers and more than the padding (< 64 B a tensor)
    return sum(f.stat().st_size for f in files) + 2**20


def fingerprint(path: str | Path) -> str:
    """SHA-256 of a model folder's weight files (the same value ``ModelSource.fingerprint`` records)."""
    files, _ = _weight_files(Path(path).expanduser().resolve())
    return _sha256(files)
