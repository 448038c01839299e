"""Karcher mean: the models' Riemannian mean direction on the unit sphere, scaled by their mean norm.

Each source θ_k is split into its norm r_k and direction u_k = θ_k / r_k (sources with r_k ≤ tol take
no part in the direction). Starting from the normalized mean of the directions (the first direction
where that mean is shorter than tol), each step moves the estimate μ along the sphere by the mean of
the log maps, v = mean_k θ_k/sin θ_k · (u_k − cos θ_k μ) with θ_k = arccos(μ·u_k) (directions
within tol of μ add nothing): μ ← cos|v| μ + sin|v| v/|v|, renormalized. It stops after ``max_iter``
steps or when |v| < tol. The result is mean_k(r_k) · μ, over the whole flattened tensor; one source is
returned as it is. As mergekit's ``karcher`` (equal weights; the base is not used).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.registry import Domain, MergeMethod, Param, register
from evomerge.merge.sparsify import compute_dtype

MAX_ITER = Param("max_iter", 10, domain=Domain(0, 10_000))
TOL = Param("tol", 1e-5, domain=Domain(0.0, 1.0, low_open=True))


def karcher(base: Tensor | None, sources: Sequence[Tensor], *, max_iter: int = 10, tol: float = 1e-5) -> Tensor:
    """mean_k |θ_k| times the Karcher mean of the directions θ_k / |θ_k| (whole flattened tensors)."""
    dtype = compute_dtype(sources[0])
    points = [s.to(dtype).flatten() for s in sources]
    if len(points) == 1:
        return points[0].reshape(sources[0].shape)
    norms = [torch.linalg.vector_norm(p) for p in points]
    directions = [p / r for p, r in zip(points, norms, strict=True) if float(r) > tol]
    if not directions:
        return torch.zeros_like(points[0]).reshape(sources[0].shape)
    mean = sphere_mean(directions, int(max_iter), tol)
    return (torch.stack(norms).mean() * mean).reshape(sources[0].shape)


def sphere_mean(directions: list[Tensor], max_iter: int, tol: float) -> Tensor:
    """The equal-weight Karcher mean of unit vectors, by at most ``max_iter`` exp/log-map steps."""
    share = 1.0 / len(directions)
    mean = torch.stack(directions).mean(dim=0)
    length = torch.linalg.vector_norm(mean)
    mean = directions[0].clone() if float(length) < tol else mean / length
    for _ in range(max_iter):
        step = torch.zeros_like(mean)
        for u in directions:
            cos = torch.dot(mean, u).clamp(-1.0, 1.0)
            angle = torch.arccos(cos)
            if float(angle) >= tol:
                step += share * (angle / torch.sin(angle)) * (u - cos * mean)
        step_length = torch.linalg.vector_norm(step)
        if float(step_length) < tol:
            break
        mean = torch.cos(step_length) * mean + torch.sin(step_length) * (step / step_length)
        length = torch.linalg.vector_norm(mean)
        if float(length) > tol:
            mean = mean / length
    return mean


register(MergeMethod("karcher", karcher, (MAX_ITER, TOL), needs_base=False,
                     doc="The models' mean direction on the sphere (Karcher mean), scaled by their mean norm."))
