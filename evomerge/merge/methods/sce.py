"""SCE (Select, Calculate, Erase; arXiv 2408.07990): task vectors weighted by their own energy.

With τ_k = θ_k − θ0 over K sources:

1. Select: where d < 1, keep the int(d·m) entries whose variance across the K task vectors is
   largest (m: entries of nonzero variance), zero the rest in every τ_k; d = 0 keeps none.
2. Calculate: w_k = mean(τ_k²) / Σ_j mean(τ_j²) — uniform 1/K where that sum is under 1e-6.
3. Erase: elect the sign of Σ_k τ_k (zero counts as +); only entries of that sign count.

θ = θ0 + Σ_k w_k m_k τ_k / max(Σ_k w_k m_k, 1e-6). As mergekit's ``sce`` (its ``select_topk``);
variance ties at the cut are broken by flat index (``sparsify.rank_window``), where mergekit's
``topk`` breaks them in its own order.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.methods.params import UNIT
from evomerge.merge.registry import MergeMethod, Param, register
from evomerge.merge.sparsify import rank_window, task_vectors

SELECT = Param("select_topk", 1.0, domain=UNIT)
UNIFORM_BELOW = 1e-6  # Σ_k mean(τ_k²) under it: the weights are uniform
MIN_DIVISOR = 1e-6  # the erased weights' sum is clamped to it


def sce(base: Tensor, sources: Sequence[Tensor], *, select_topk: float = 1.0) -> Tensor:
    """θ0 + the energy-weighted, sign-erased mean of the selected task vectors."""
    tau = task_vectors(base, sources)
    if select_topk < 1:
        tau = tau * selected(tau, select_topk)
    weights = energy_weights(tau).reshape(-1, *([1] * base.dim()))
    elected = torch.where(tau.sum(dim=0) >= 0, 1.0, -1.0).to(tau.dtype)
    erased = weights * (tau.sign() == elected)
    merged = (tau * erased).sum(dim=0) / erased.sum(dim=0).clamp(min=MIN_DIVISOR)
    return base.to(tau.dtype) + merged


def selected(tau: Tensor, density: float) -> Tensor:
    """Mask of the int(d·m) entries of largest variance across sources (m: entries of nonzero variance)."""
    variance = tau.var(dim=0, unbiased=False)
    keep = int(int(torch.count_nonzero(variance)) * density) if density > 0 else 0
    return rank_window(variance, 0, keep)


def energy_weights(tau: Tensor) -> Tensor:
    """mean(τ_k²) per source, normalized to sum 1; uniform where the energies sum under 1e-6."""
    energy = tau.square().reshape(tau.shape[0], -1).mean(dim=1)
    total = float(energy.sum())
    if abs(total) < UNIFORM_BELOW:
        return torch.full_like(energy, 1.0 / tau.shape[0])
    return energy / total


register(MergeMethod("sce", sce, (SELECT,),
                     doc="Keep the entries the sources disagree on most, weight each task vector by "
                     "its energy, average the sign-agreeing entries."))
