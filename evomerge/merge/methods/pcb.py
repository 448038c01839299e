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

Steps 1–3 depend on the sources alone (``balances``: a worker keeps them, ``Balances``); steps 4–5
(``kept_mean``) are the candidate's, from its d_k and w_k.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
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
    n, dtype = tau.shape[1], tau.dtype
    clipped, balance = balances(tau)
    del tau  # steps 4–5 need τ̂ and β only: the memory plan's 5·K + 1 copies hold with it gone
    cuts = order_statistic(balance, [cut_rank(n, float(d)) for d in density]).flatten()
    w = torch.tensor([float(x) for x in weight], dtype=dtype, device=balance.device)
    merged = kept_mean(list(clipped), list(balance), cuts, balance.max(dim=1).values, w)
    return base.to(dtype) + lam * merged.reshape(base.shape)


def balances(tau: Tensor) -> tuple[Tensor, Tensor]:
    """(τ̂, β) of steps 1–3 for task vectors flattened to K × n: what depends on the sources alone. Order statistics
    by selection (``kthvalue``), not sorts, and in-place steps: the peak is a few K × n float32 arrays."""
    k, n = tau.shape
    magnitude = tau.abs()
    magnitude.clamp_(min=order_statistic(magnitude, [int(n * CLIP)] * k),
                     max=order_statistic(magnitude, [max(0, int(n * (1 - CLIP)) - 1)] * k))
    balance = rescaled(magnitude).square_().mul_(k).exp_()
    balance.mul_(torch.tanh(tau * tau.sum(dim=0)))
    return magnitude.mul_(tau.sign()), balance


def kept_mean(clipped: Sequence[Tensor], balance: Sequence[Tensor], cuts: Tensor, highs: Tensor,
              weight: Tensor) -> Tensor:
    """Steps 4 and 5 without θ0 and λ: Σ_k w_k β̂_k τ̂_k / max(Σ_k β̂_k, 1e-12), over one range of entries of each
    source's τ̂_k and β_k (each entry computed alone), from each source's cut t_k, largest balance and w_k (K values):
    β̂_k = Norm(max(β_k, t_k)), whose minimum is t_k. Entry by entry, so compiled (``materialize/kernels.py`` runs
    this very function) it is one loop; the sums over k run in source order, as a sum over a K × n tensor's rows."""
    spans = highs - cuts
    spans = torch.where(spans > 0, spans, torch.ones_like(spans))
    scales = [(torch.maximum(beta, cuts[k]) - cuts[k]) / spans[k] for k, beta in enumerate(balance)]
    terms = [scale * tau * weight[k] for k, (scale, tau) in enumerate(zip(scales, clipped, strict=True))]
    return functools.reduce(torch.add, terms) / functools.reduce(torch.add, scales).clamp(min=MIN_DIVISOR)


@dataclass(frozen=True)
class Balances:
    """A tensor's source-only PCB work, kept by a worker between candidates: τ̂ and β of steps 1–3, and each row of β
    sorted, so a candidate's cut is a lookup instead of a selection over the tensor."""

    clipped: Tensor  # K × n
    balance: Tensor  # K × n
    ascending: Tensor  # K × n: each row of ``balance`` sorted

    @classmethod
    def of(cls, base: Tensor, sources: Sequence[Tensor]) -> "Balances":
        clipped, balance = balances(task_vectors(base, sources).reshape(len(sources), -1))
        ascending = torch.empty_like(balance)
        order = torch.empty(balance.shape[1], dtype=torch.int64, device=balance.device)
        for row, out in zip(balance, ascending, strict=True):  # a row at a time: one row's sort order beside them
            torch.sort(row, out=(out, order))
        return cls(clipped, balance, ascending)

    def cuts(self, density: Sequence[float]) -> Tensor:
        """t_k of step 4, K values: row k's value at ``cut_rank`` (the one ``order_statistic`` finds)."""
        n = self.ascending.shape[1]
        ranks = [cut_rank(n, float(d)) for d in density]
        return torch.stack([row[r] for row, r in zip(self.ascending, ranks, strict=True)])

    def highs(self) -> Tensor:
        return self.ascending[:, -1]

    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.clipped, self.balance, self.ascending))


def balances_bytes(n: int, k: int) -> int:
    """Bytes of a tensor's ``Balances`` for n entries and K sources in float32 (three K × n arrays)."""
    return 3 * k * n * 4


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
