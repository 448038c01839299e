"""Common random numbers for DARE and DELLA: uniform draws that depend on (seed, tensor, source) only.

Every candidate of a run sees the same draws u and keeps entry i when u_i < p_i, so raising a
density only adds entries, comparisons between candidates carry no mask noise, and a worker never
has to store them.

The draws come from a counter-based generator: entry i of a tensor gets a 32-bit integer hash of
its flat index and a per-(seed, tensor, source pair) key, and its draw is 16 bits of that hash,
u = (bits + 0.5) / 2**16. Because the draw of an entry is a formula of its index, a fused kernel
regenerates it in registers at memory speed (no cache, any chunking, any device) and gets the very
bits the eager operators get from ``uniform_draws``; a cache, where one fits, stores the 16 bits.

- The hash is integer arithmetic on int64 tensors holding 32-bit values, with multipliers below
  2**27, so no product overflows and every device and compiler computes the same bits.
- Sources 2j and 2j+1 share one hash (key of pair j): the high 16 bits are source 2j's draw, the
  low 16 bits source 2j+1's. One hash per two sources halves the work of a kernel.
- 16 bits resolve densities to 1.5e-5, far below anything a search tells apart; u is never 0 or 1.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import Tensor

MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # Mueller's 32-bit integer hash multiplier (< 2**27: products stay below 2**59)
_HIGH = 0x2545F49  # folds index bits above 32 into the counter (tensors of more than 2**32 entries)
SCALE = 2.0**-16  # draw = (bits + 0.5) * SCALE, exact in float32
SCHEME = "pair-hash32-u16/1"  # names these bits: change it with any change to a draw (run folders record it)


def draw_key(seed: int, tensor_name: str, source_index: int) -> int:
    """The 32-bit key of the source pair that ``source_index`` belongs to (stable across processes)."""
    digest = hashlib.sha256(f"{seed}\x00{tensor_name}\x00{source_index // 2}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash (two multiply-xorshift rounds) of int64 tensors holding 32-bit values."""
    x = ((x >> 16) ^ x) * _MIX & MASK32
    x = ((x >> 16) ^ x) * _MIX & MASK32
    return (x >> 16) ^ x


def pair_hash(index: Tensor, key: Tensor | int) -> Tensor:
    """The hash of flat indices ``index`` (int64) under a pair's key: 32 bits, two sources' draws."""
    counter = ((index & MASK32) ^ key) + (index >> 32) * _HIGH & MASK32
    return mix32(counter)


def draw_bits(hashed: Tensor, source_index: int) -> Tensor:
    """The 16 bits of a pair's hash that are source ``source_index``'s draw (high for even, low for odd)."""
    return hashed >> 16 if source_index % 2 == 0 else hashed & 0xFFFF


def uniform_draws(seed: int, tensor_name: str, source_index: int, shape: Sequence[int],
                  device: str | torch.device = "cpu") -> Tensor:
    """U(0,1) float32 of ``shape``, a pure function of the three keys (the same on every device)."""
    n = 1
    for size in shape:
        n *= int(size)
    index = torch.arange(n, dtype=torch.int64, device=device)
    bits = draw_bits(pair_hash(index, draw_key(seed, tensor_name, source_index)), source_index)
    return ((bits.to(torch.float32) + 0.5) * SCALE).reshape(tuple(shape))
