"""Linear / model soup: θ = Σ w_k θ_k / Σ w_k (normalize) or Σ w_k θ_k.

Guard: where |Σ w_k| < 1e-8 the sum is left undivided (``sparsify.weight_sum_divisor``, the task-vector
methods' guard too). mergekit's ``linear`` has no guard there and returns inf/nan; elsewhere the two agree.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.methods.params import WEIGHT, normalize
from evomerge.merge.registry import MergeMethod, register
from evomerge.merge.sparsify import compute_dtype, weight_sum_divisor


def linear(base: Tensor | None, sources: Sequence[Tensor], *, weight: Sequence[float],
           normalize: bool = True) -> Tensor:
    """Weighted average of the models themselves (the base is not used); a zero weight sum divides by 1."""
    dtype = compute_dtype(sources[0])
    out = torch.zeros_like(sources[0], dtype=dtype)
    for tensor, w in zip(sources, weight, strict=True):
        out.add_(tensor.to(dtype), alpha=float(w))
    total = float(sum(weight))
    if normalize:
        out.div_(weight_sum_divisor(total))
    return out


register(MergeMethod("linear", linear, (WEIGHT, normalize(True)), needs_base=False,
                     doc="Weighted average of the models themselves."))
