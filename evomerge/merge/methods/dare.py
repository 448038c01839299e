"""DARE: drop each entry of τ_k at random (keep with probability d), rescale survivors by 1/d.

Differs from mergekit on purpose: mergekit rescales the survivors so that the L1 norm of τ_k is
kept; evomerge uses the paper's 1/d rule (unbiased: E[τ̂] = τ). The keep decision is u < d with
u from ``uniform_draws`` — common random numbers across candidates — not a fresh Bernoulli draw.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import register
from evomerge.merge.sparsify import combine, task_vectors


def dropped_and_rescaled(tau: Tensor, draws: Sequence[Tensor], density: Sequence[float]) -> Tensor:
    out = []
    for t, u, d in zip(tau, draws, density):
        out.append(torch.where(u.to(t.device) < d, t / d, torch.zeros_like(t)) if d < 1 else t)
    return torch.stack(out)


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
