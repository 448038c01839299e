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
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from evomerge.errors import EvomergeError

MAX_HEADER = 100_000_000  # bytes: the safetensors library's own bound on a header's length
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
                raise EvomergeError(f"{info.file} ends inside tensor '{e.name}': the checkpoint is truncated; copy it "
                                    "again")
    finally:
        for f in handles.values():
            f.close()
    return buffer


def safetensors_index(file: Path) -> dict[str, TensorInfo]:
    """Every tensor of a safetensors file from its header alone: dtype, shape, absolute byte offset.

    The header is checked as the safetensors library checks it, before anything is allocated: its length is bounded
    (``MAX_HEADER``) and lies inside the file; it is a JSON object; each tensor has a known dtype, a shape, and data
    offsets that follow the previous tensor's, inside the file, as long as dtype × shape says. So a damaged or hostile
    file is one ``EvomergeError`` naming it, never a huge allocation or a crash deeper down."""
    try:
        with open(file, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            length = _header_length(f.read(8), size)
            header = json.loads(_read_exactly(f, length), object_pairs_hook=_no_duplicate_keys)
        return _tensor_infos(file, header, 8 + length, size - 8 - length)
    except OSError as e:
        raise EvomergeError(f"cannot read tensors from {file}: {e.strerror or e}") from None
    except (ValueError, RecursionError) as e:  # _HeaderError, or JSON that does not parse
        raise EvomergeError(f"{file} is not a valid safetensors file: {_what(e)}; copy or save the model again"
                            ) from None


class _HeaderError(ValueError):
    """What is wrong with a safetensors header (the caller names the file)."""


def _header_length(prefix: bytes, size: int) -> int:
    if len(prefix) < 8:
        raise _HeaderError(f"it has {size} bytes, fewer than the 8 of a header length")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER:
        raise _HeaderError(f"its header length {length} exceeds the {MAX_HEADER}-byte bound")
    if 8 + length > size:
        raise _HeaderError(f"its header length {length} runs past the end of the {size}-byte file")
    return length


def _read_exactly(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise _HeaderError("the file ended while its header was read")
    return data


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _HeaderError(f"its header names {key!r} twice")
        out[key] = value
    return out


def _tensor_infos(file: Path, header: Any, data_start: int, data_size: int) -> dict[str, TensorInfo]:
    """The header's tensors, each checked; their byte ranges must tile the data area in order, as safetensors writes."""
    if not isinstance(header, dict):
        raise _HeaderError(f"its header is a JSON {type(header).__name__}, not an object")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise _HeaderError("its header's __metadata__ is not an object")
    out = {name: _tensor_info(name, meta, file, data_start) for name, meta in header.items() if name != "__metadata__"}
    end = 0
    for name, info in sorted(out.items(), key=lambda item: item[1].start):
        if info.start - data_start != end:
            raise _HeaderError(f"tensor {name!r} starts at byte {info.start - data_start} of the data, not at {end} "
                               "where the previous tensor ends")
        end += info.nbytes
    if end != data_size:
        raise _HeaderError(f"its tensors hold {end} bytes but the file has {data_size} after the header")
    return out


def _tensor_info(name: str, meta: Any, file: Path, data_start: int) -> TensorInfo:
    if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= meta.keys():
        raise _HeaderError(f"tensor {name!r} lacks its dtype, shape or data_offsets")
    dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _SAFETENSORS_DTYPES:
        raise _HeaderError(f"tensor {name!r} has dtype {dtype!r}, not one of {', '.join(_SAFETENSORS_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise _HeaderError(f"tensor {name!r} has shape {shape!r}, not a list of sizes >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)):
        raise _HeaderError(f"tensor {name!r} has data_offsets {offsets!r}, not [begin, end]")
    info = TensorInfo(_SAFETENSORS_DTYPES[dtype], tuple(shape), file, data_start + offsets[0])
    if offsets[1] - offsets[0] != info.nbytes:
        raise _HeaderError(f"tensor {name!r} has {offsets[1] - offsets[0]} bytes in data_offsets {offsets} "
                           f"but shape {shape} of {dtype} needs {info.nbytes}")
    return info


def _what(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "its header nests too deeply"
    return str(e) if isinstance(e, _HeaderError) else f"its header is not UTF-8 JSON ({e})"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def nbytes(blocks: Iterable[Block]) -> int:
    return sum(b.size for b in blocks)
