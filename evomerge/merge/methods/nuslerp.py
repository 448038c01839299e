"""NuSLERP: SLERP between two sources' task vectors, the interpolation factor read from their weights.

With τ_k = θ_k − θ0 and t = w_1 / (w_0 + w_1) (0.5 where |w_0 + w_1| < 1e-6):
θ = θ0 + (sin((1 − t)Ω) τ_0 + sin(tΩ) τ_1) / sin Ω, Ω the angle between τ_0 and τ_1 (norms under 1e-7
count as 1e-7), and (1 − t) τ_0 + t τ_1 where the two are colinear (1 − cos²Ω ≤ 1e-16). The angle is
taken over the whole flattened tensor (``nuslerp_flatten``, the default), else per vector along the
last axis, or along the first with ``nuslerp_row_wise``. As mergekit's ``nuslerp`` with a base model;
mergekit's form without one (SLERP of the models themselves) is not offered.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.methods.params import WEIGHT
from evomerge.merge.registry import MergeMethod, Param, register
from evomerge.merge.sparsify import task_vectors

MIN_NORM = 1e-7
COLINEAR = 1e-16  # 1 − cos²Ω at or under it: interpolate linearly
EQUAL_BELOW = 1e-6  # |w_0 + w_1| under it: t = 0.5
FLATTEN = Param("nuslerp_flatten", True)
ROW_WISE = Param("nuslerp_row_wise", False)


def nuslerp(base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], nuslerp_flatten: bool = True,
            nuslerp_row_wise: bool = False) -> Tensor:
    """θ0 + SLERP(τ_0, τ_1; t = w_1 / (w_0 + w_1)) over the whole tensor, its rows or its columns."""
    total = float(weight[0]) + float(weight[1])
    t = 0.5 if abs(total) < EQUAL_BELOW else float(weight[1]) / total
    tau = task_vectors(base, sources)
    a, b = tau[0], tau[1]
    if nuslerp_flatten:
        a, b = a.reshape(-1), b.reshape(-1)
    elif nuslerp_row_wise:
        a, b = a.transpose(0, -1), b.transpose(0, -1)
    mixed = interpolate(a, b, t)
    if not nuslerp_flatten and nuslerp_row_wise:
        mixed = mixed.transpose(0, -1)
    return base.to(tau.dtype) + mixed.reshape(base.shape)


def interpolate(a: Tensor, b: Tensor, t: float) -> Tensor:
    """Spherical interpolation of the vectors along the last axis of ``a`` and ``b`` (linear where colinear)."""
    cos = ((a / unit_norm(a)) * (b / unit_norm(b))).sum(dim=-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos.square()) <= COLINEAR
    omega = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin_omega = torch.where(colinear, torch.ones_like(omega), torch.sin(omega))
    spherical = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin_omega
    return torch.where(colinear, (1 - t) * a + t * b, spherical)


def unit_norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp(min=MIN_NORM)


register(MergeMethod("nuslerp", nuslerp, (WEIGHT, FLATTEN, ROW_WISE), min_sources=2, max_sources=2,
                     doc="SLERP between two task vectors, t from their weights."))
