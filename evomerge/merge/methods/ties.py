"""TIES: trim each τ_k to its top-d magnitudes, elect a sign per entry, average the agreeing entries.

As mergekit's ``ties`` (generalized task arithmetic with magnitude trimming and "sum" consensus):
keep max(1, int(d·n)) entries of τ_k, elect sign(Σ w_k τ̂_k) with 0 counted as +, divide by the
agreeing weights (a zero divisor becomes 1), then multiply by λ. Normalization on by default.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import register
from evomerge.merge.sparsify import combine, magnitude_mask, task_vectors


@register("ties", per_source=("weight", "density"))
def ties(
    base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
    lam: float = 1.0, normalize: bool = True,
) -> Tensor:
    """θ0 + λ Σ w_k m_k τ̂_k / Σ w_k m_k, exactly as mergekit's ``ties``."""
    tau = task_vectors(base, sources)
    trimmed = torch.stack([t * magnitude_mask(t, d) for t, d in zip(tau, density)])
    return combine(base, trimmed, weight, consensus=True, normalize=normalize, lam=lam)
