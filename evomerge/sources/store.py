"""Model tensors in aligned buffers, one per layer group: read once per node, shared without copies.

A model's tensors are laid out in *blocks*, one per layer group at granularity 1 (``embed``,
``layers.<i>``, ``final_norm``, ``lm_head``): each block is one byte buffer holding its tensors at
offsets that are multiples of ``ALIGN`` bytes, in the checkpoint's own dtype (bfloat16 stays
bfloat16). Why blocks:

- **alignment**: the compiled merge kernels read inputs in place only when they start on a vector
  boundary (a view at an arbitrary offset, as a safetensors mmap gives, is copied on every call);
- **sharing**: a buffer is what Ray's object store or a shared mapping hands to every worker process
  of a node without a copy; tensors are views into it, so a node holds one copy of the sources;
- **streaming**: a layer group is the unit a GPU worker copies to the device when the sources do
  not stay resident there (``materialize/device.py``).

Reading goes straight from the safetensors file into the block (``readinto``: one copy, no
temporary tensor); pickle checkpoints, where allowed, are loaded and copied in.
"""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from evomerge.errors import EvomergeError

ALIGN = 64  # bytes: a cache line, and the widest vector load (AVX-512) the kernels use
_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes are: its dtype and shape, and its file and byte offset (safetensors)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path | None = None  # None: a pickle checkpoint, read whole
    start: int = 0

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str  # torch dtype name without "torch." (plain data: it travels to workers)
    shape: tuple[int, ...]
    offset: int  # bytes from the block's start, a multiple of ALIGN

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def nbytes(self) -> int:
        return numel(self.shape) * self.torch_dtype.itemsize


@dataclass(frozen=True)
class Block:
    """One layer group's tensors of one model, laid out in one buffer of ``size`` bytes."""

    group: str
    size: int
    entries: tuple[Entry, ...]


def numel(shape: Sequence[int]) -> int:
    n = 1
    for size in shape:
        n *= int(size)
    return n


def layout(names: Sequence[str], infos: Mapping[str, TensorInfo], group: Callable[[str], str]) -> tuple[Block, ...]:
    """Blocks in the order their groups first appear in ``names``; entries in ``names`` order."""
    members: dict[str, list[str]] = {}
    for name in names:
        members.setdefault(group(name), []).append(name)
    blocks = []
    for g, group_names in members.items():
        entries, offset = [], 0
        for name in group_names:
            info = infos[name]
            entries.append(Entry(name, str(info.dtype).removeprefix("torch."), info.shape, offset))
            offset += -(-info.nbytes // ALIGN) * ALIGN
        blocks.append(Block(g, max(offset, ALIGN), tuple(entries)))
    return tuple(blocks)


def views(block: Block, buffer: Tensor) -> dict[str, Tensor]:
    """The block's tensors as views into ``buffer`` (a uint8 tensor of ``block.size`` bytes)."""
    out = {}
    for e in block.entries:
        out[e.name] = buffer[e.offset : e.offset + e.nbytes].view(e.torch_dtype).view(e.shape)
    return out


def as_buffer(data: Any) -> Tensor:
    """A uint8 tensor over a buffer from a store (a tensor, or a read-only numpy array from Ray's store)."""
    if isinstance(data, Tensor):
        return data
    with warnings.catch_warnings():  # shared buffers are read-only by design; nothing ever writes the sources
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(data)


def read_block(block: Block, infos: Mapping[str, TensorInfo], loaded: Mapping[str, Tensor] | None = None) -> Tensor:
    """A fresh aligned buffer holding the block's tensors, read from their files (or copied from ``loaded``)."""
    buffer = torch.empty(block.size, dtype=torch.uint8)  # torch's CPU allocator aligns to 64 bytes
    handles: dict[Path, Any] = {}
    try:
        for e in block.entries:
            info = infos[e.name]
            target = buffer[e.offset : e.offset + e.nbytes]
            if info.file is None:
                assert loaded is not None, "a pickle checkpoint's tensors must be loaded first"
                target.view(e.torch_dtype).view(e.shape).copy_(loaded[e.name])
                continue
            f = handles.get(info.file) or handles.setdefault(info.file, open(info.file, "rb"))
            f.seek(info.start)
            if e.nbytes and f.readinto(target.numpy().data) != e.nbytes:
                raise EvomergeError(f"{info.file} ends inside tensor '{e.name}': the checkpoint is truncated; copy it again")
    finally:
        for f in handles.values():
            f.close()
    return buffer


def safetensors_index(file: Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file from its header alone: dtype, shape, absolute byte offset."""
    try:
        with open(file, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        out = {}
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            begin, end = meta["data_offsets"]
            info = TensorInfo(_SAFETENSORS_DTYPES[meta["dtype"]], tuple(meta["shape"]), file, 8 + length + begin)
            if end - begin != info.nbytes:
                raise ValueError(f"tensor '{name}' has {end - begin} bytes for shape {meta['shape']} {meta['dtype']}")
            out[name] = info
        return out
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        raise EvomergeError(f"cannot read tensors from {file}: {e}") from None


def nbytes(blocks: Iterable[Block]) -> int:
    return sum(b.size for b in blocks)
