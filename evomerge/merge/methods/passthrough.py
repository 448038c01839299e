"""Passthrough: one model's tensors as they are, times an optional scale.

Alone it copies a model (mergekit's method of the same name takes exactly one input per tensor); its use
is layer stacking, where every output layer is one layer of one model (``recipes.stack``).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from evomerge.merge.registry import MergeMethod, Param, register
from evomerge.merge.sparsify import compute_dtype

SCALE = Param("scale", 1.0, per_source=True)


def passthrough(base: Tensor | None, sources: Sequence[Tensor], *, scale: Sequence[float] = (1.0,)) -> Tensor:
    """The one source's tensor times its scale: a new tensor, equal bit for bit at scale 1."""
    return sources[0].to(compute_dtype(sources[0])) * float(scale[0])


register(MergeMethod("passthrough", passthrough, (SCALE,), needs_base=False, min_sources=1, max_sources=1,
                     doc="One model's tensors, times an optional scale; layer stacking takes its layers by slices."))
