"""Task arithmetic: θ = θ0 + λ Σ w_k τ_k (mergekit's defaults: no normalization)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from evomerge.merge.registry import register
from evomerge.merge.sparsify import combine, task_vectors


@register("task_arithmetic", per_source=("weight",))
def task_arithmetic(base: Tensor, sources: Sequence[Tensor], *, weight: Sequence[float], lam: float = 1.0, normalize: bool = False) -> Tensor:
    """Add the weighted task vectors to the base."""
    return combine(base, task_vectors(base, sources), weight, consensus=False, normalize=normalize, lam=lam)
