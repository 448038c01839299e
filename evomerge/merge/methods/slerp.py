"""SLERP between the base (t = 0) and one other model (t = 1).

The angle Ω comes from the whole flattened tensors (what ``mergekit-yaml`` computes: its row-wise
kernel sees each tensor as one row); nearly colinear tensors (|cos| > 0.9995) are interpolated
linearly, and norms under 1e-8 count as 1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.merge.methods.params import T
from evomerge.merge.registry import MergeMethod, register
from evomerge.merge.sparsify import compute_dtype

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def cos_angle(a: Tensor, b: Tensor) -> Tensor:
    """cos Ω between two flattened tensors of shape [1, n], as a [1, 1] tensor (zero norms count as 1)."""
    norm_a = torch.linalg.vector_norm(a, dim=1, keepdim=True)
    norm_b = torch.linalg.vector_norm(b, dim=1, keepdim=True)
    norm_a = torch.where(norm_a > EPS, norm_a, torch.ones_like(norm_a))
    norm_b = torch.where(norm_b > EPS, norm_b, torch.ones_like(norm_b))
    return ((a / norm_a) * (b / norm_b)).sum(dim=1, keepdim=True).clamp(-1, 1)


def coefficients(dot: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """The weights of θ_a and θ_b for interpolation ``t`` given cos Ω: spherical, or linear when colinear."""
    colinear = dot.abs() > DOT_THRESHOLD
    omega = torch.acos(torch.where(colinear, torch.zeros_like(dot), dot))
    sin_omega = torch.sin(omega)
    safe = torch.where(colinear, torch.ones_like(sin_omega), sin_omega)
    coef_a = torch.where(colinear, torch.full_like(dot, 1 - t), torch.sin((1 - t) * omega) / safe)
    coef_b = torch.where(colinear, torch.full_like(dot, t), torch.sin(t * omega) / safe)
    return coef_a, coef_b


def slerp(base: Tensor, sources: Sequence[Tensor], *, t: float = 0.5) -> Tensor:
    """sin((1−t)Ω)/sinΩ · θ_a + sin(tΩ)/sinΩ · θ_b, linear where the two are colinear."""
    dtype = compute_dtype(base)
    a = base.to(dtype).reshape(1, -1)
    b = sources[0].to(dtype).reshape(1, -1)
    coef_a, coef_b = coefficients(cos_angle(a, b), t)
    return (coef_a * a + coef_b * b).reshape(base.shape)


register(MergeMethod("slerp", slerp, (T,), min_sources=1, max_sources=1,
                     doc="Spherical interpolation between the base and one model."))
