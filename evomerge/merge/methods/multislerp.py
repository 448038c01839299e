"""Multi-SLERP: a weighted mean of any number of task vectors on the sphere, scaled by their mean norm.

With τ_k = θ_k − θ0 over the whole flattened tensor, weights w (divided by Σ w with
``normalize_weights``) and unit vectors u_k = τ_k / (|τ_k| + ε):

μ = Σ w_k u_k / |Σ w_k u_k|; v = Σ w_k (u_k − (u_k·μ) μ) (the tangent mean at μ);
θ = θ0 + Σ w_k |τ_k| · (cos(|v| + ε) μ + sin(|v| + ε) v / (|v| + ε)).

Where |Σ w_k u_k| < ε the mean has no direction: two sources are then mixed linearly, θ0 + Σ w_k τ_k,
and more are refused — except where every τ_k is zero (a tensor no source changed), which gives θ0 where
mergekit refuses. One source is returned as it is. As mergekit's ``multislerp`` with a base model;
mergekit's form without one is not offered.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.merge.methods.params import WEIGHT
from evomerge.merge.registry import Domain, MergeMethod, Param, register
from evomerge.merge.sparsify import compute_dtype, task_vectors

NORMALIZE = Param("normalize_weights", True)
EPS = Param("eps", 1e-8, domain=Domain(0.0, 1.0, low_open=True))


def multislerp(base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], normalize_weights: bool = True,
               eps: float = 1e-8) -> Tensor:
    """θ0 + the mean norm times the exp map at μ of the weighted tangent mean of the unit task vectors."""
    if len(sources) == 1:
        return sources[0].to(compute_dtype(sources[0]))
    tau = task_vectors(base, sources)
    flat = tau.reshape(len(sources), -1)
    w = torch.tensor([float(x) for x in weight], dtype=tau.dtype, device=tau.device)
    if normalize_weights:
        if float(w.sum()) == 0:
            raise EvomergeError("multislerp: the weights sum to 0 and cannot be normalized; change them or set "
                                "normalize_weights: false")
        w = w / w.sum()
    norms = torch.linalg.vector_norm(flat, dim=-1, keepdim=True)
    if not bool(norms.any()):
        return base.to(tau.dtype)  # no source moved this tensor (frozen embeddings): nothing to interpolate
    units = flat / (norms + eps)
    mean = (units * w[:, None]).sum(dim=0)
    length = torch.linalg.vector_norm(mean)
    if float(length) < eps:
        if len(sources) == 2:
            return base.to(tau.dtype) + (w[0] * tau[0] + w[1] * tau[1])
        raise EvomergeError("multislerp: the weighted mean of the sources' unit task vectors is zero (opposite task "
                            "vectors whose weights cancel); change the weights")
    mean = mean / length
    tangent = ((units - (units * mean).sum(dim=-1, keepdim=True) * mean) * w[:, None]).sum(dim=0)
    size = torch.linalg.vector_norm(tangent) + eps
    direction = mean * torch.cos(size) + tangent * (torch.sin(size) / size)
    return base.to(tau.dtype) + ((norms[:, 0] * w).sum() * direction).reshape(base.shape)


register(MergeMethod("multislerp", multislerp, (WEIGHT, NORMALIZE, EPS),
                     doc="Weighted mean of any number of task vectors on the sphere, scaled by their mean norm."))
