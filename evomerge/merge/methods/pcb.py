"""PCB (Parameter Competition Balancing; Du et al., NeurIPS 2024): each entry of each task vector weighted by
how much it matters to its own task and how well it agrees with the others; the least balanced dropped.

Over the n entries of one tensor, with τ_k = θ_k − θ0 flattened, K sources:

1. Clip: |τ_k| clamped to its own sorted values at ranks int(n·c) and max(0, int(n·(1 − c)) − 1) (ascending,
   c = 1e-4: under 10⁴ entries the largest is clamped to the second largest); τ̂_k = sign(τ_k)·clipped |τ_k|.
2. Intra-balancing: a_k = exp(K · Norm(clipped |τ_k|)²), Norm(x) = (x − min x) / (max x − min x).
3. Inter-balancing: b_k = tanh(τ_k ⊙ Σ_j τ_j).
4. Drop and rescale: β_k = a_k ⊙ b_k; with t_k its sorted value at rank min(int(n·(1 − d_k)), n − 1) (ascending),
   β̂_k = Norm(max(β_k, t_k)) — entries at or below the cut get 0, the best-balanced 1.
5. θ = θ0 + λ · Σ_k w_k β̂_k ⊙ τ̂_k / max(Σ_k β̂_k, 1e-12).

The paper writes steps 2 and 3 as Softmax(K·Norm(τ_k ⊙ τ_k)) and Σ_j Softmax(Norm(τ_k ⊙ τ_j)); the
authors' published code — the one behind its tables, and what this follows — computes exp(K·Norm(|τ_k|)²)
(a softmax without its denominator, which the rescale of step 4 cancels) and tanh(τ_k ⊙ Σ_j τ_j), and
adds the clip of step 1. d_k is its ``pcb_ratio`` (the fraction kept; 0.1 by default there and here),
one per source here. w_k are the per-task coefficients the authors tune by evolution (1 = the paper).
Differences on purpose: the code flattens the whole model into one vector per task, evomerge works per
tensor (as TIES and mergekit do); a Norm over values that are all equal (a tensor no source changed, or
a cut at the maximum) is 0 here where the code divides 0 by 0.

Steps 1–4 depend on the sources and d_k only; step 5 is the per-candidate weighted sum.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.methods import params
from evomerge.merge.methods.params import LAMBDA, WEIGHT
from evomerge.merge.registry import MergeMethod, register
from evomerge.merge.sparsify import task_vectors

CLIP = 1e-4  # fraction of each |τ_k| clamped at either end (the authors' code)
MIN_DIVISOR = 1e-12  # Σ_k β̂_k is clamped to it: entries every source dropped stay at θ0
DENSITY = replace(params.DENSITY, default=0.1)  # the fraction of each τ_k kept: the authors' default


def pcb(base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], density: Sequence[float],
        lam: float = 1.0) -> Tensor:
    """θ0 + λ · the balance-weighted mean of the clipped task vectors (steps 1–5 of the module docstring)."""
    tau = task_vectors(base, sources).reshape(len(sources), -1)
    if tau.shape[1] == 0:
        return base.to(tau.dtype)
    clipped, scale = balanced(tau, density)
    w = torch.tensor([float(x) for x in weight], dtype=tau.dtype, device=tau.device).unsqueeze(1)
    divisor = scale.sum(dim=0).clamp(min=MIN_DIVISOR)
    merged = clipped.mul_(scale).mul_(w).sum(dim=0) / divisor
    return base.to(tau.dtype) + lam * merged.reshape(base.shape)


def balanced(tau: Tensor, density: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(τ̂, β̂) of steps 1–4 for task vectors flattened to K × n. Order statistics by selection (``kthvalue``), not
    sorts, and in-place steps: the peak is a few K × n float32 arrays, not a sort's values and int64 indices."""
    k, n = tau.shape
    magnitude = tau.abs()
    magnitude.clamp_(min=order_statistic(magnitude, [int(n * CLIP)] * k),
                     max=order_statistic(magnitude, [max(0, int(n * (1 - CLIP)) - 1)] * k))
    balance = rescaled(magnitude).square_().mul_(k).exp_()
    balance.mul_(torch.tanh(tau * tau.sum(dim=0)))
    cuts = order_statistic(balance, [cut_rank(n, float(d)) for d in density])
    return magnitude.mul_(tau.sign()), rescaled(balance.clamp_(min=cuts))


def order_statistic(x: Tensor, ranks: Sequence[int]) -> Tensor:
    """Per row i, its value at ascending rank ``ranks[i]`` (0 = smallest), as a K × 1 column."""
    return torch.stack([row.kthvalue(r + 1).values for row, r in zip(x, ranks, strict=True)]).unsqueeze(1)


def cut_rank(n: int, density: float) -> int:
    """Ascending rank of the drop cut: int(n·(1 − d)), the last entry where 1 − d rounds to 1."""
    return min(int(n * (1 - density)), n - 1)


def rescaled(x: Tensor) -> Tensor:
    """Each row mapped onto [0, 1] by its minimum and maximum; a row of equal values maps to 0."""
    low, high = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    span = high - low
    return (x - low).div_(torch.where(span > 0, span, torch.ones_like(span)))  # equal values: x − low = 0


register(MergeMethod("pcb", pcb, (WEIGHT, DENSITY, LAMBDA), task_vector=True, mergekit=False, eager_copies=(5, 1),
                     doc="Weight each entry of each task vector by its importance to its task and its agreement "
                         "with the others, drop the least balanced, average (PCB)."))
