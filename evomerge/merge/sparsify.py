"""Shared pieces of the task-vector methods: which entries of τ_k survive, and how survivors combine.

Trimming by magnitude is a threshold lookup in the magnitudes sorted once (``sorted_abs``), so a
worker that caches them pays no sort per candidate (DESIGN.md §9). Counts follow mergekit: top
``max(1, int(d·n))`` entries for 0 < d < 1, all for d ≥ 1, none for d ≤ 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def compute_dtype(t: Tensor) -> torch.dtype:
    """float32 math, or float64 when the inputs are float64."""
    return torch.promote_types(t.dtype, torch.float32)


def task_vectors(base: Tensor, sources: Sequence[Tensor]) -> Tensor:
    """τ stacked as [K, *shape] in the compute dtype."""
    dtype = compute_dtype(base)
    b = base.to(dtype)
    return torch.stack([s.to(dtype) - b for s in sources])


def keep_count(density: float, n: int) -> int:
    if density >= 1:
        return n
    if density <= 0 or n == 0:
        return 0
    return max(1, int(density * n))


def sorted_magnitudes(tau: Tensor) -> Tensor:
    """|τ| flattened, largest first: computed once per tensor and source."""
    return tau.abs().flatten().sort(descending=True).values


def magnitude_mask(tau: Tensor, density: float, sorted_abs: Tensor | None = None) -> Tensor:
    """Keep the top-d fraction of |τ| (entries tied with the threshold are kept too)."""
    k = keep_count(density, tau.numel())
    if k >= tau.numel():
        return torch.ones_like(tau, dtype=torch.bool)
    if k == 0:
        return torch.zeros_like(tau, dtype=torch.bool)
    ranked = sorted_magnitudes(tau) if sorted_abs is None else sorted_abs
    return tau.abs() >= ranked[k - 1]


def outlier_mask(tau: Tensor, density: float, gamma: float, sorted_abs: Tensor | None = None) -> Tensor:
    """Breadcrumbs: drop the largest γ fraction and the smallest entries, keeping int(d·n) in between.

    Counts as mergekit: keep = int(d·n), top = int(γ·n), bottom = max(0, n − keep − top); the top
    cut shrinks when keeping d·n entries needs it. A count that rounds to 0 keeps nothing.
    """
    n = tau.numel()
    if density >= 1:
        return torch.ones_like(tau, dtype=torch.bool)
    keep = int(density * n)
    if keep == 0:
        return torch.zeros_like(tau, dtype=torch.bool)
    bottom = max(0, n - keep - int(gamma * n))
    ranked = (sorted_magnitudes(tau) if sorted_abs is None else sorted_abs).flip(0)  # smallest first
    low, high = ranked[bottom], ranked[bottom + keep - 1]
    mag = tau.abs()
    return (mag >= low) & (mag <= high)


def della_probabilities(tau: Tensor, density: float, epsilon: float) -> Tensor:
    """Keep probability per entry, rising linearly with magnitude rank within each row: d−ε … d+ε."""
    rows = tau.reshape(1, -1) if tau.dim() < 2 else tau.reshape(tau.shape[0], -1)
    m = rows.shape[1]
    ranks = rows.abs().argsort(dim=1).argsort(dim=1).to(tau.dtype)  # 0 = smallest
    scaled = ranks / (m - 1) if m > 1 else torch.zeros_like(ranks)
    return ((density - epsilon) + scaled * 2 * epsilon).reshape(tau.shape)


def combine(base: Tensor, deltas: Tensor, weight: Sequence[float], *, consensus: bool, normalize: bool, lam: float) -> Tensor:
    """θ0 + λ · (weighted sum of the surviving deltas), optionally TIES sign election and disjoint mean.

    With consensus the elected sign is sign(Σ_k w_k τ̂_k) (zero counts as +) and only entries of
    that sign count, in the sum and in the divisor Σ w_k m_k; a zero divisor becomes 1.
    """
    w = torch.tensor(list(weight), dtype=deltas.dtype).reshape(-1, *([1] * (deltas.dim() - 1)))
    weighted = deltas * w
    if consensus:
        elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
        mask = weighted.sign() == elected
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        mixed = weighted.sum(dim=0)
        total = float(sum(weight))
        divisor = torch.tensor(1.0 if abs(total) < 1e-8 else total, dtype=deltas.dtype)
    if normalize:
        mixed = mixed / divisor
    return base.to(deltas.dtype) + lam * mixed
