"""Model Stock: interpolate between the base and the sources' mean by the task vectors' agreement."""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import MergeMethod, register
from evomerge.merge.sparsify import compute_dtype


def model_stock(base: Tensor, sources: Sequence[Tensor]) -> Tensor:
    """c = mean pairwise cos(τ_i, τ_j); t = N c / (1 + (N−1) c); θ = t·mean(θ_k) + (1−t)·θ0.

    As mergekit: cosines of the flattened tensor, norms clamped at 1e-6, and the base kept (t = 0)
    where 1 + (N−1) c vanishes.
    """
    dtype = compute_dtype(base)
    b = base.to(dtype).flatten()
    models = [s.to(dtype).flatten() for s in sources]
    offsets = [m - b for m in models]
    cosines = [
        ((x * y).sum() / (torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y)).clamp(min=1e-6)).clamp(-1, 1)
        for x, y in combinations(offsets, 2)
    ]
    c = torch.stack(cosines).mean()
    n = len(models)
    denominator = 1 + (n - 1) * c
    t = torch.zeros_like(c) if denominator.abs() < 1e-6 else n * c / denominator
    mean = torch.stack(models).mean(dim=0)
    return (t * mean + (1 - t) * b).reshape(base.shape)


register(MergeMethod("model_stock", model_stock, (), min_sources=2,
                     doc="Interpolate between the base and the sources' mean by their agreement."))
