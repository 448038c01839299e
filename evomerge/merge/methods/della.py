"""DELLA: magnitude-ranked random drop (keep probability d−ε … d+ε within each row), rescale by 1/p_i.

Like DARE, the keep decision is u < p_i with common random draws, and survivors are rescaled by
their own 1/p_i (the paper's rule; mergekit rescales to keep the L1 norm).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import register
from evomerge.merge.sparsify import combine, della_probabilities, task_vectors


def _pruned(base: Tensor, sources: Sequence[Tensor], density: Sequence[float], epsilon: float, draws: Sequence[Tensor]) -> Tensor:
    out = []
    for t, u, d in zip(task_vectors(base, sources), draws, density):
        if d >= 1:
            out.append(t)
            continue
        p = della_probabilities(t, d, epsilon).clamp(1e-6, 1.0)
        out.append(torch.where(u.to(t.device) < p, t / p, torch.zeros_like(t)))
    return torch.stack(out)


@register("della", per_source=("weight", "density"))
def della(
    base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
    draws: Sequence[Tensor], epsilon: float = 0.15, lam: float = 1.0, normalize: bool = True,
) -> Tensor:
    """DELLA pruning with TIES sign election and disjoint mean (mergekit's ``della`` defaults)."""
    return combine(base, _pruned(base, sources, density, epsilon, draws), weight, consensus=True, normalize=normalize, lam=lam)


@register("della_linear", per_source=("weight", "density"))
def della_linear(
    base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
    draws: Sequence[Tensor], epsilon: float = 0.15, lam: float = 1.0, normalize: bool = False,
) -> Tensor:
    """DELLA pruning added like task arithmetic."""
    return combine(base, _pruned(base, sources, density, epsilon, draws), weight, consensus=False, normalize=normalize, lam=lam)
