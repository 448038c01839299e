"""DELLA: magnitude-ranked random drop (keep probability d−ε … d+ε within each row), rescale by 1/p_i.

Like DARE, the keep decision is u_i < p_i with common random draws, and survivors are divided by
their own p_i (the paper's rule; mergekit rescales each τ_k to keep its L1 norm instead). Where
mergekit refuses d ± ε outside (0, 1), evomerge lets the search go there: an entry with p_i ≤ 0 is
always dropped and one with p_i ≥ 1 always kept, unscaled. d ≥ 1 keeps τ_k whole, as mergekit.
ε is one value for all sources here (mergekit allows one per source).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import register
from evomerge.merge.sparsify import combine, della_probabilities, drop_and_rescale, task_vectors


def _pruned(base: Tensor, sources: Sequence[Tensor], density: Sequence[float], epsilon: float, draws: Sequence[Tensor]) -> Tensor:
    return torch.stack([
        t if d >= 1 else drop_and_rescale(t, u, della_probabilities(t, float(d), epsilon))
        for t, u, d in zip(task_vectors(base, sources), draws, density)
    ])


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
