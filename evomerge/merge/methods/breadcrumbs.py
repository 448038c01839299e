"""Model Breadcrumbs: drop both the largest (outlier) and the smallest entries of each τ_k.

Counts as mergekit's ``magnitude_outliers`` (see ``evomerge.merge.sparsify.outlier_mask``): keep
int(d·n) entries, after dropping the int(γ·n) largest where that leaves room. On a tensor of fewer
than 1/γ entries (under 100 at the default γ = 0.01) no outlier is dropped, and where int(d·n) = 0
the whole τ_k is dropped. γ is one value for all sources here (mergekit allows one per source).
Defaults as mergekit: no normalization.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import register
from evomerge.merge.sparsify import combine, outlier_mask, task_vectors


def _trimmed(base: Tensor, sources: Sequence[Tensor], density: Sequence[float], gamma: float) -> Tensor:
    tau = task_vectors(base, sources)
    return torch.stack([t * outlier_mask(t, d, gamma) for t, d in zip(tau, density)])


@register("breadcrumbs", per_source=("weight", "density"))
def breadcrumbs(
    base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
    gamma: float = 0.01, lam: float = 1.0, normalize: bool = False,
) -> Tensor:
    """Keep int(d·n) entries after dropping the top γ fraction; add like task arithmetic."""
    return combine(base, _trimmed(base, sources, density, gamma), weight, consensus=False, normalize=normalize, lam=lam)


@register("breadcrumbs_ties", per_source=("weight", "density"))
def breadcrumbs_ties(
    base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
    gamma: float = 0.01, lam: float = 1.0, normalize: bool = False,
) -> Tensor:
    """Breadcrumbs trimming with TIES sign election."""
    return combine(base, _trimmed(base, sources, density, gamma), weight, consensus=True, normalize=normalize, lam=lam)
