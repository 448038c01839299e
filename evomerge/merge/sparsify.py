"""Shared pieces of the task-vector methods: which entries of τ_k survive, and how survivors combine.

Trimming by magnitude reads its thresholds from |τ| sorted once, largest first (``sorted_magnitudes``):
a worker that caches that array per tensor and source pays no sort per candidate, only a lookup
(docs/DESIGN.md, "Materialization"). Ranks are those of a stable sort — entries of equal magnitude are ranked by flat
index, lower first — so a mask keeps exactly the number of entries its count rule says, the same
on every device.

Counts follow mergekit (``mergekit/sparsify.py``), as docs/DESIGN.md states them:

- top-d trimming (TIES) keeps ``max(1, int(d·n))`` entries for 0 < d < 1, all for d ≥ 1, none for
  d ≤ 0 (mergekit truncates d·n, and so do we);
- breadcrumbs keeps ``int(d·n)`` entries after dropping the ``int(γ·n)`` largest; the top cut
  shrinks when keeping ``int(d·n)`` needs it, and a keep count that truncates to 0 keeps nothing.

mergekit also keeps exactly that many, but breaks ties in its (unstable) ``argsort`` order; where
tensors have tied magnitudes at a cut, the two may keep different entries of equal magnitude.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def compute_dtype(t: Tensor) -> torch.dtype:
    """float32 math, or float64 when the inputs are float64."""
    return torch.promote_types(t.dtype, torch.float32)


def task_vector(base: Tensor, source: Tensor, dtype: torch.dtype) -> Tensor:
    """τ_k = θ_k − θ0 in ``dtype`` (the compute dtype): the one formula of the reference, the fused kernels and the
    TIES cuts, so all see the same values. A base already in ``dtype`` is not converted again."""
    return source.to(dtype) - base.to(dtype)


def task_vectors(base: Tensor, sources: Sequence[Tensor]) -> Tensor:
    """τ stacked as [K, *shape] in the compute dtype."""
    dtype = compute_dtype(base)
    b = base.to(dtype)
    return torch.stack([task_vector(b, s, dtype) for s in sources])


# each float dtype's bits as a signed integer of its width: a non-negative float orders as its bit pattern does
SORT_KEY = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
            torch.float16: torch.int16}


def sort_magnitudes(magnitudes: Tensor, *, descending: bool = False) -> tuple[Tensor, Tensor]:
    """Non-negative values (|τ|, 1-D) stably sorted: (values, indices), equal values by index, lower first. Sorted as
    the integers of their bit patterns, which order alike and which torch sorts several times faster (radix)."""
    bits, order = magnitudes.view(SORT_KEY[magnitudes.dtype]).sort(descending=descending, stable=True)
    return bits.view(magnitudes.dtype), order


def sorted_magnitudes(tau: Tensor) -> Tensor:
    """|τ| flattened, largest first: what a worker computes once per tensor and source."""
    return sort_magnitudes(tau.abs().flatten(), descending=True)[0]


def keep_count(density: float, n: int) -> int:
    """How many entries top-d trimming keeps (mergekit's rule)."""
    if density >= 1:
        return n
    if density <= 0 or n == 0:
        return 0
    return max(1, int(density * n))


def rank_window(tau: Tensor, start: int, stop: int, sorted_abs: Tensor | None = None) -> Tensor:
    """Mask of the entries whose rank by |τ| (0 = largest, ties by flat index) lies in [start, stop).

    The cut values are ``sorted_abs[start]`` and ``sorted_abs[stop − 1]``; only a group of tied
    magnitudes that straddles a cut needs more than a comparison (a cumulative count over it).
    """
    n = tau.numel()
    start, stop = max(0, start), min(n, stop)
    if start >= stop:
        return torch.zeros_like(tau, dtype=torch.bool)
    if start == 0 and stop == n:
        return torch.ones_like(tau, dtype=torch.bool)
    ranked = sorted_magnitudes(tau) if sorted_abs is None else sorted_abs
    mag = tau.abs()
    high, low = ranked[start], ranked[stop - 1]  # high >= low
    mask = mag > low
    if start > 0:
        mask &= mag < high
    for value in (low,) if bool(high == low) or start == 0 else (low, high):
        tied = mag == value
        first = int((ranked > value).sum())  # rank of the first entry of this magnitude
        count = int(tied.sum())
        if start <= first and first + count <= stop:
            mask |= tied
        else:
            rank = first + torch.cumsum(tied.flatten(), 0).reshape(tau.shape) - 1
            mask |= tied & (rank >= start) & (rank < stop)
    return mask


def magnitude_mask(tau: Tensor, density: float, sorted_abs: Tensor | None = None) -> Tensor:
    """TIES trimming: keep the ``keep_count(d, n)`` entries of largest |τ|."""
    return rank_window(tau, 0, keep_count(density, tau.numel()), sorted_abs)


def outlier_mask(tau: Tensor, density: float, gamma: float, sorted_abs: Tensor | None = None) -> Tensor:
    """Breadcrumbs: drop the largest γ fraction and the smallest entries, keeping int(d·n) in between."""
    n = tau.numel()
    if density >= 1:
        return torch.ones_like(tau, dtype=torch.bool)
    keep = max(0, int(density * n))
    bottom = max(0, n - keep - int(gamma * n))  # dropped from the small end
    return rank_window(tau, n - bottom - keep, n - bottom, sorted_abs)


def della_probabilities(tau: Tensor, density: float, epsilon: float) -> Tensor:
    """Keep probability per entry, rising linearly with magnitude rank within each row: d−ε … d+ε.

    A row is the first axis (a 1-D tensor is one row; further axes are flattened into the row).
    Ranks come from a stable sort, so tied magnitudes get distinct ranks by position; a row of one
    entry gets p = d. Values outside [0, 1] are returned as computed: the caller never keeps an
    entry with p ≤ 0 and treats p > 1 as 1.
    """
    rows = tau.reshape(1, -1) if tau.dim() < 2 else tau.reshape(tau.shape[0], -1)
    m = rows.shape[1]
    if m <= 1:
        return torch.full_like(tau, density)
    order = rows.abs().argsort(dim=1, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(m, device=tau.device).expand_as(order))
    scaled = ranks.to(tau.dtype) / (m - 1)
    return ((density - epsilon) + scaled * (2 * epsilon)).reshape(tau.shape)


def drop_and_rescale(tau: Tensor, draws: Tensor, keep_probability: float | Tensor) -> Tensor:
    """Keep entry i when u_i < p_i and divide it by min(p_i, 1); drop it otherwise (p ≤ 0: always)."""
    u = draws.to(device=tau.device)
    p = torch.as_tensor(keep_probability, dtype=tau.dtype, device=tau.device)
    kept = u < p
    return torch.where(kept, tau / torch.where(kept, p.clamp(max=1.0), torch.ones_like(p)), torch.zeros_like(tau))


def weight_sum_divisor(total: float) -> float:
    """The divisor of a normalized weighted sum: Σ w_k, or 1 where |Σ w_k| < 1e-8 (weights that cancel leave the
    sum undivided instead of blowing it up). The one guard of every normalizing method and kernel."""
    return total if abs(total) >= 1e-8 else 1.0


def combine(base: Tensor, deltas: Tensor, weight: Sequence[float], *, consensus: bool, normalize: bool,
            lam: float) -> Tensor:
    """θ0 + λ · (weighted sum of the surviving deltas), optionally TIES sign election and disjoint mean.

    As mergekit's generalized task arithmetic: the deltas are weighted first; with consensus the
    elected sign is sign(Σ_k w_k τ̂_k) (zero counts as +) and only nonzero weighted entries of that
    sign count, in the sum and in the divisor Σ w_k m_k, where a zero divisor becomes 1. Without
    consensus the divisor is Σ w_k, replaced by 1 when |Σ w_k| < 1e-8. λ multiplies after the
    division.
    """
    w = torch.tensor([float(x) for x in weight], dtype=deltas.dtype, device=deltas.device)
    w = w.reshape(-1, *([1] * (deltas.dim() - 1)))
    weighted = deltas * w
    if consensus:
        elected = torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
        mask = weighted.sign() == elected
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.new_tensor(weight_sum_divisor(float(w.sum())))  # Σ w_k as summed in the compute dtype
    if normalize:
        mixed = mixed / divisor
    return base.to(deltas.dtype) + lam * mixed
