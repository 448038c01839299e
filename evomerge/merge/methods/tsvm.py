"""TSV-M (Task Singular Vectors: Merge; Gargiulo et al., CVPR 2025): low-rank task matrices, decorrelated, summed.

For a matrix (a 2-D tensor) of K sources with τ_k = θ_k − θ0 of shape m × n:

1. Each τ_k is cut to its r = int(min(m, n) / K) largest singular components: U_k (m × r), s_k, V_k (n × r).
2. The stacked bases U = [U_1 … U_K] (m × Kr) and V = [V_1 … V_K] (n × Kr) are replaced by their nearest
   matrices with orthonormal columns (the orthogonal Procrustes solution, the polar factor P·Qᵀ of
   A = P Σ Qᵀ), which removes the interference between the tasks' subspaces.
3. θ = θ0 + λ · U⊥ diag(w_c · s) V⊥ᵀ, w_c the weight of the source component c came from.

Every other tensor (biases, norms: 1-D) takes the mean task vector: θ = θ0 + λ · Σ_k w_k τ_k / K.
λ (recipes: ``lambda``, as for task arithmetic) is the paper's α, default 1.0.
The paper has no per-source weight; w = 1 is its method, and a weight scales its source's singular
values after the decorrelation, which equals scaling τ_k before it (as FusionBench's per-task ``alpha``)
for every w_k ≠ 0 and keeps the bases of a zero-weighted source instead of an arbitrary basis of a
zero matrix, so the merge is continuous in every weight. Written from the paper's algorithm (and its
published ``compute_and_sum_svd_mem_reduction``); the one guard it lacks: singular components at or
below the numerical-rank tolerance of their τ_k (``max(m, n) · eps · s_max``; all of a τ_k that is
zero) take no part, where the paper's code would orthogonalize with whatever basis LAPACK returns
for them (a zero τ_k has none of its own), which differs between devices.

Everything but the weights in step 3 depends on the sources only. Step 3 is computed as Σ_k w_k P_k with
P_k = U⊥_k diag(s_k) V⊥_kᵀ, source k's columns (``product``), so a worker can keep either the ``components``
(the SVDs' results, ≤ 8 bytes per entry; a candidate then costs the products, 2R flops per entry) or the K
products themselves (4K bytes per entry; a candidate is then a weighted sum of K matrices, as task
arithmetic). Here the sum is accumulated onto θ0 in source order (``combine``); the fast path's linear kernel
computes it over the same P_k (``materialize/fused.py``), equal within float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor

from evomerge.merge.methods.params import LAMBDA, WEIGHT
from evomerge.merge.registry import MergeMethod, register
from evomerge.merge.sparsify import compute_dtype, task_vectors


@dataclass(frozen=True)
class Components:
    """A matrix's decorrelated task components: source k owns the columns ``spans[k]`` of u, s and v."""

    u: Tensor  # m × R, orthonormal columns
    s: Tensor  # R singular values
    v: Tensor  # n × R, orthonormal columns
    spans: tuple[tuple[int, int], ...]  # per source, its [start, stop) columns (in source order)


def tsvm(base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], lam: float = 1.0) -> Tensor:
    """θ0 + λ · (decorrelated low-rank task matrices, summed) for a matrix; θ0 + λ · mean_k w_k τ_k otherwise."""
    tau = task_vectors(base, sources)
    if base.dim() != 2:
        w = torch.tensor([float(x) for x in weight], dtype=tau.dtype, device=tau.device)
        merged = (tau * w.reshape(-1, *([1] * base.dim()))).sum(dim=0) / len(sources)
        return base.to(tau.dtype) + lam * merged
    parts = components(tau)
    return combine(base, (product(parts, k) for k in range(len(sources))), weight, lam)


def components(tau: Tensor) -> Components:
    """Steps 1 and 2 for the stacked task matrices ``tau`` (K × m × n): the sources' part of TSV-M."""
    k, m, n = tau.shape
    rank = min(m, n) // k
    u, s, v = tau.new_zeros(k, m, rank), tau.new_zeros(k, rank), tau.new_zeros(k, n, rank)
    moved = [i for i in range(k) if tau[i].any()]  # a zero task matrix has no components: no SVD (an untouched
    if moved:  # embedding of a fine-tune was the largest SVD of a merge)
        uu, ss, vh = torch.linalg.svd(tau[moved], full_matrices=False)
        u[moved], s[moved], v[moved] = uu[:, :, :rank], ss[:, :rank], vh[:, :rank, :].transpose(1, 2)
    tolerance = max(m, n) * torch.finfo(tau.dtype).eps * s[:, :1]  # per source; s is sorted, largest first
    keep = s > tolerance
    stops = torch.cumsum(keep.sum(dim=1), 0).tolist()
    spans = tuple(zip([0, *stops[:-1]], stops, strict=True))
    u_all, v_all = u.permute(0, 2, 1)[keep].T, v.permute(0, 2, 1)[keep].T  # columns in source order
    return Components(polar(u_all), s[keep], polar(v_all), spans)


def polar(a: Tensor) -> Tensor:
    """The matrix with orthonormal columns nearest to ``a`` (orthogonal Procrustes): P·Qᵀ of a = P Σ Qᵀ."""
    if a.shape[1] == 0:
        return a
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def product(parts: Components, k: int) -> Tensor:
    """P_k = u_k diag(s_k) v_kᵀ over source k's columns: its decorrelated task matrix (m × n)."""
    a, b = parts.spans[k]
    return (parts.u[:, a:b] * parts.s[a:b]) @ parts.v[:, a:b].T


def combine(base: Tensor, products: Iterable[Tensor], weight: Sequence[float], lam: float) -> Tensor:
    """θ0 + Σ_k (λ w_k) P_k, accumulated onto a copy of θ0 in the compute dtype, in source order: the one
    summation every path uses (one new tensor and K passes over it per candidate)."""
    out = base.to(compute_dtype(base), copy=True)
    for p, w in zip(products, weight, strict=True):
        out.add_(p, alpha=lam * float(w))
    return out


def component_bytes(shape: Sequence[int], k: int) -> int:
    """Bytes of a matrix's ``Components`` in float32, at most: R ≤ min(m, n) columns of u and v, and s."""
    if len(shape) != 2:
        return 0
    m, n = shape
    rank = k * (min(m, n) // k)
    return (m + n) * rank * 4 + rank * 4


def product_bytes(shape: Sequence[int], k: int) -> int:
    """Bytes of a matrix's K products P_k in float32."""
    return k * shape[0] * shape[1] * 4 if len(shape) == 2 else 0


register(MergeMethod("tsvm", tsvm, (WEIGHT, LAMBDA), task_vector=True, mergekit=False, eager_copies=(3, 6),
                     doc="Cut each task matrix to its top 1/K singular components, decorrelate the stacked "
                         "bases, sum (TSV-M)."))
