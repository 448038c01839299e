"""The base model and its fine-tunes, loaded from Hugging Face folders and checked compatible.

Everything a merge needs from disk is read here (files and headers: ``folder.py``), once, and checked
before any search work starts; errors name the first offending model and tensor, and say how to fix it.

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
- Checkpoint keys that the model class does not use (old checkpoints' rotary ``inv_freq`` buffers,
  say) are dropped with a note, as ``from_pretrained`` drops unexpected keys.
- Tensors are kept in their own dtype, in aligned blocks (``store.py``). ``share`` reads them into
  any store (Ray's object store: once per node); ``SourcePool.attach`` maps a store's blocks
  without copying; ``SourcePool.load`` is both in one process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.sources.arch import used_tensors
from evomerge.sources.folder import ModelFolder, fingerprint, natural_key
from evomerge.sources.layers import group_of, num_layers
from evomerge.sources.store import Block, TensorInfo, as_buffer, layout, read_block, views


@dataclass(frozen=True)
class ModelSource:
    """One model folder: its config, its tensors (views into its aligned blocks, on CPU), its fingerprint."""

    path: Path
    config: dict[str, Any] = field(repr=False)
    tensors: dict[str, Tensor] = field(repr=False)
    known_fingerprint: str | None = None  # None: computed from the files when first asked
    blocks: tuple[Block, ...] = field(default=(), repr=False)  # the layout of ``buffers``, one block per layer group
    buffers: tuple[Tensor, ...] = field(default=(), repr=False)

    @functools.cached_property
    def fingerprint(self) -> str:
        """SHA-256 of the weight files (reading them takes a while for large models: only when asked)."""
        return self.known_fingerprint or fingerprint(self.path)

    @classmethod
    def load(cls, path: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> ModelSource:
        folder = ModelFolder.open(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        infos, loaded = folder.index()
        names = sorted(infos, key=natural_key)
        blocks = layout(names, infos, block_group(folder.config, names))
        buffers = tuple(read_block(b, infos, loaded) for b in blocks)
        return _model(folder.path, folder.config, blocks, buffers)


@dataclass(frozen=True)
class SharedSources:
    """A pool's layout and its buffers' handles in a store (plain data: it travels to every worker).

    ``handles[m][b]`` is what the store's ``put`` returned for block b of model m (model 0 is the
    base): the buffer itself in process, an object reference in Ray's object store.
    """

    paths: tuple[Path, ...]
    configs: tuple[dict[str, Any], ...]
    names: tuple[str, ...]
    blocks: tuple[tuple[Block, ...], ...]
    handles: tuple[tuple[Any, ...], ...]
    trust_remote_code: bool = False

    @property
    def nbytes(self) -> int:
        """Bytes the store holds: every model's blocks."""
        return sum(b.size for model in self.blocks for b in model)


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
        """Read the models into this process's memory (aligned blocks in their own dtype)."""
        shared = share(base, sources, lambda buffer: buffer, allow_pickle=allow_pickle,
                       trust_remote_code=trust_remote_code)
        return cls.attach(shared, lambda handles: list(handles))

    @classmethod
    def attach(cls, shared: SharedSources, get: Callable[[Sequence[Any]], Sequence[Any]]) -> SourcePool:
        """The pool whose tensors are views into a store's buffers; ``get`` turns one model's handles into buffers."""
        models = []
        for path, config, blocks, handles in zip(shared.paths, shared.configs, shared.blocks, shared.handles,
                                                 strict=True):
            models.append(_model(path, config, blocks, tuple(as_buffer(b) for b in get(list(handles)))))
        return cls(models[0], models[1:], list(shared.names), shared.trust_remote_code)

    @classmethod
    def of(cls, models: Sequence[Mapping[str, Tensor]], config: dict[str, Any] | None = None) -> SourcePool:
        """A pool of in-memory tensors (tests, benchmarks), packed as a loaded one; the first mapping is the base."""
        names = sorted(models[0], key=natural_key)
        group = block_group(config or {}, names)
        packed = []
        for i, tensors in enumerate(models):
            infos = {n: TensorInfo(t.dtype, tuple(t.shape)) for n, t in tensors.items()}
            blocks = layout(names, infos, group)
            path = Path("/memory") / ("base" if i == 0 else f"source{i - 1}")
            packed.append(_model(path, config or {}, blocks, tuple(read_block(b, infos, tensors) for b in blocks)))
        return cls(packed[0], packed[1:], names)

    @property
    def config(self) -> dict[str, Any]:
        return self.base.config

    @property
    def n_layers(self) -> int:
        return num_layers(self.config, self.tensor_names)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of most of the base's floating-point bytes: the merged model's unless a config says otherwise."""
        bytes_of: dict[torch.dtype, int] = {}
        for t in self.base.tensors.values():
            if t.is_floating_point():
                bytes_of[t.dtype] = bytes_of.get(t.dtype, 0) + t.numel() * t.element_size()
        return max(bytes_of, key=lambda d: bytes_of[d]) if bytes_of else torch.float32

    @property
    def models(self) -> list[ModelSource]:
        """The base, then the sources."""
        return [self.base, *self.sources]

    def is_mergeable(self, name: str) -> bool:
        """Floating-point tensors are merged; integer/bool buffers are copied from the base."""
        return self.base.tensors[name].is_floating_point()

    def fingerprints(self) -> dict[str, str]:
        """``{"base:<path>": sha256, "source<k>:<path>": sha256}`` with k from 0, for run logs and model cards."""
        out = {f"base:{self.base.path}": self.base.fingerprint}
        out.update({f"source{k}:{s.path}": s.fingerprint for k, s in enumerate(self.sources)})
        return out


def share(base: str | Path, sources: Sequence[str | Path], put: Callable[[Tensor], Any], *, allow_pickle: bool = False,
          trust_remote_code: bool = False) -> SharedSources:
    """Check the models, then read them block by block into a store: ``put(buffer)`` returns a handle.

    Only one block is in this process's memory at a time when ``put`` copies it away (Ray's object
    store); with ``put`` keeping the buffer, this is a plain in-process load.
    """
    folders = _open_compatible(base, sources, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    indexes = [f.index() for f in folders]
    infos = [used_tensors(folders[0].path, folder.path, index[0], trust_remote_code)
             for folder, index in zip(folders, indexes, strict=True)]
    for folder, other in zip(folders[1:], infos[1:], strict=True):
        _check_tensors(folders[0].path, _shapes(infos[0]), folder.path, _shapes(other))
    names = sorted(infos[0], key=natural_key)
    group = block_group(folders[0].config, names)
    blocks, handles = [], []
    for model_infos, (_, loaded) in zip(infos, indexes, strict=True):
        model_blocks = layout(names, model_infos, group)
        blocks.append(model_blocks)
        handles.append(tuple(put(read_block(b, model_infos, loaded)) for b in model_blocks))
    return SharedSources(tuple(f.path for f in folders), tuple(f.config for f in folders), tuple(names), tuple(blocks),
                         tuple(handles), trust_remote_code)


def check_compatible(base: str | Path, sources: Sequence[str | Path], *, allow_pickle: bool = False,
                     trust_remote_code: bool = False) -> None:
    """The checks ``SourcePool.load`` makes, from configs and safetensors headers alone (no tensor is read)."""
    folders = _open_compatible(base, sources, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    if any(f.pickled for f in folders):
        return  # a pickle's shapes are only known once it is loaded: SourcePool.load checks them then
    infos = [used_tensors(folders[0].path, f.path, f.index()[0], trust_remote_code) for f in folders]
    for folder, other in zip(folders[1:], infos[1:], strict=True):
        _check_tensors(folders[0].path, _shapes(infos[0]), folder.path, _shapes(other))


def _model(path: Path, config: dict[str, Any], blocks: tuple[Block, ...], buffers: tuple[Tensor, ...]) -> ModelSource:
    tensors: dict[str, Tensor] = {}
    for block, buffer in zip(blocks, buffers, strict=True):
        tensors.update(views(block, buffer))
    return ModelSource(path, config, tensors, None, blocks, buffers)


def block_group(config: dict[str, Any], names: Sequence[str]) -> Callable[[str], str]:
    """A tensor's layer group at granularity 1 (its block); names no group rule knows share one block."""
    n_layers = num_layers(config, names)

    def group(name: str) -> str:
        try:
            return group_of(name, n_layers)
        except EvomergeError:  # GenomeSpace reports unplaceable names; the store only needs some block
            return "other"

    return group


def _open_compatible(base: str | Path, sources: Sequence[str | Path], *, allow_pickle: bool,
                     trust_remote_code: bool) -> list[ModelFolder]:
    if not sources:
        raise EvomergeError("no source models given: list at least one fine-tune of the base to merge")
    folders = [ModelFolder.open(p, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
               for p in [base, *sources]]
    for folder in folders[1:]:
        _check_configs(folders[0], folder)
    return folders


def _shapes(infos: dict[str, TensorInfo]) -> dict[str, tuple[int, ...]]:
    return {name: info.shape for name, info in infos.items()}


def _check_configs(base: ModelFolder, other: ModelFolder) -> None:
    for key in ("model_type", "architectures"):
        if base.config.get(key) != other.config.get(key):
            raise EvomergeError(
                f"{other.path} has {key} {other.config.get(key)!r} but the base {base.path} has "
                f"{base.config.get(key)!r}: merge only fine-tunes of the same base architecture"
            )
    want, got = _vocab_size(base.config), _vocab_size(other.config)
    if want != got:
        raise EvomergeError(
            f"{other.path} has vocab_size {got} but the base has {want}: merging across vocabularies is not supported; "
            "resize the source's embeddings to the base's tokenizer first (model.resize_token_embeddings)"
        )


def _vocab_size(config: dict[str, Any]) -> Any:
    return config.get("vocab_size", config.get("text_config", {}).get("vocab_size"))


def _check_tensors(base_path: Path, base: dict[str, tuple[int, ...]], path: Path,
                   other: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(base.keys() - other.keys(), key=natural_key)
    if missing:
        raise EvomergeError(
            f"{path} lacks tensor '{missing[0]}' that the base has ({len(missing)} missing): "
            "merge only full fine-tunes of the same base (merge LoRA adapters into the model first)"
        )
    extra = sorted(other.keys() - base.keys(), key=natural_key)
    if extra:
        raise EvomergeError(
            f"{path} has tensor '{extra[0]}' that the base lacks ({len(extra)} extra): "
            "merge only fine-tunes of the same base architecture"
        )
    for name in sorted(base, key=natural_key):
        if base[name] != other[name]:
            raise EvomergeError(
                f"tensor '{name}' has shape {list(other[name])} in {path} but {list(base[name])} in the base "
                f"{base_path}: merge only fine-tunes of the same base model size"
            )


