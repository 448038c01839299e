"""Common random numbers for DARE and DELLA: uniform draws that depend on (seed, tensor, source) only.

Every candidate of a run sees the same draws u and keeps entry i when u_i < p_i, so raising a
density only adds entries, comparisons between candidates carry no mask noise, and a worker can
draw once per run (docs/DESIGN.md, "Merge methods").
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import Tensor


def uniform_draws(seed: int, tensor_name: str, source_index: int, shape: Sequence[int], device: str | torch.device = "cpu") -> Tensor:
    """U[0,1) float32 of ``shape``, a pure function of the three keys (stable across processes)."""
    digest = hashlib.sha256(f"{seed}\x00{tensor_name}\x00{source_index}".encode()).digest()
    generator = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.rand(tuple(shape), generator=generator, dtype=torch.float32).to(device)
