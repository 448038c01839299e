"""NearSwap: take the other model's value where it lies near the base's, keep the base's where it is far.

Per entry, with d = |θ_b − θ_a| (θ_a the base, θ_b the one source): w = clamp(t / max(d, 1e-6), 0, 1) and
θ = w·θ_b + (1 − w)·θ_a. Entries closer than t are swapped whole; farther ones move by t towards θ_b.
``t`` is a distance in the weights' own units (mergekit's method of the same name, which takes it
without a default; the default here is that of the merge the method was published with).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import Domain, MergeMethod, Param, register
from evomerge.merge.sparsify import compute_dtype

MIN_DISTANCE = 1e-6  # distances below it count as it, so w stays finite where the models agree
DISTANCE = Param("t", 1e-4, domain=Domain(0.0, math.inf))


def nearswap(base: Tensor, sources: Sequence[Tensor], *, t: float = 1e-4) -> Tensor:
    """w·θ_b + (1 − w)·θ_a with w = clamp(t / |θ_b − θ_a|, 0, 1), entry by entry."""
    dtype = compute_dtype(base)
    return blend(base.to(dtype), sources[0].to(dtype), torch.tensor(t, dtype=dtype, device=base.device))


def blend(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """The formula over any range of entries (the fast path's kernel calls it on chunks): ``t`` a 0-d tensor of
    the compute dtype, so every path divides by the same operation."""
    w = (t / (b - a).abs().clamp(min=MIN_DISTANCE)).clamp(0.0, 1.0)
    return w * b + (1 - w) * a


register(MergeMethod("nearswap", nearswap, (DISTANCE,), min_sources=1, max_sources=1,
                     doc="Take the other model's entries that lie within t of the base's; move the rest by t."))
