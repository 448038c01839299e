"""DARE: drop each entry of τ_k at random (keep with probability d), rescale survivors by 1/d.

Differs from mergekit on purpose: mergekit rescales the survivors so that the L1 norm of τ_k is
kept; evomerge uses the paper's 1/d rule (unbiased: E[τ̂] = τ). The keep decision is u < d with
u from ``uniform_draws`` — common random numbers across candidates — not a fresh Bernoulli draw.
d ≥ 1 keeps τ_k whole and d ≤ 0 drops it all, as mergekit. Defaults as mergekit: no normalization.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import register
from evomerge.merge.sparsify import combine, drop_and_rescale, task_vectors


def dropped_and_rescaled(tau: Tensor, draws: Sequence[Tensor], density: Sequence[float]) -> Tensor:
    """Each τ_k keeps the entries whose draw is under d_k, divided by d_k; d_k ≥ 1 keeps τ_k whole."""
    return torch.stack([t if d >= 1 else drop_and_rescale(t, u, float(d)) for t, u, d in zip(tau, draws, density)])


@register("dare_linear", per_source=("weight", "density"))
def dare_linear(
    base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
    draws: Sequence[Tensor], lam: float = 1.0, normalize: bool = False,
) -> Tensor:
    """DARE survivors added like task arithmetic."""
    tau = dropped_and_rescaled(task_vectors(base, sources), draws, density)
    return combine(base, tau, weight, consensus=False, normalize=normalize, lam=lam)


@register("dare_ties", per_source=("weight", "density"))
def dare_ties(
    base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
    draws: Sequence[Tensor], lam: float = 1.0, normalize: bool = False,
) -> Tensor:
    """DARE survivors combined with TIES sign election (mergekit's default: no normalization)."""
    tau = dropped_and_rescaled(task_vectors(base, sources), draws, density)
    return combine(base, tau, weight, consensus=True, normalize=normalize, lam=lam)
