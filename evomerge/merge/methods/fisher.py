"""Fisher-weighted averaging (Matena & Raffel, NeurIPS 2022, "Merging Models with Fisher-Weighted Averaging").

Each source k is a Laplace approximation of its posterior: a Gaussian at θ_k with precision its diagonal Fisher
F_k. The merge maximizes Σ_k w_k log p(θ | θ_k, F_k), which is, entry by entry,

    θ* = Σ_k w_k (F_k + ε) θ_k / Σ_k w_k (F_k + ε),

w_k the paper's per-model weights λ_k (FusionBench's scaling coefficients; only their ratios matter) and ε a
floor on every Fisher entry (FusionBench's ``minimal_fisher_weight``, 10⁻⁶ by default here too): an entry no
source's gradients reached takes the weighted mean instead of 0/0, and a Fisher entry far below ε counts as
"no information" rather than as a confident vote. The formula uses the sources' own Fishers only: the base is
no source of the average (as in the paper, which merges fine-tuned models without one), so none is computed
for it. A tensor without Fisher statistics (``fishers`` None) is the weighted mean — ``linear``, the limit of
equal F_k — and so is every entry whose denominator is 0 (ε = 0 and no gradient anywhere, or all weights 0:
then ``linear``'s guard).

Where the statistics come from (``scoring/fisher.py``): the empirical diagonal Fisher on the calibration texts.
FusionBench's optional normalization of each model's Fisher by its norm over all merged tensors is not offered
(the paper has none): it equals weights w_k / ‖F_k‖, which a recipe can set (the FusionBench test merges so).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.merge.methods.linear import linear
from evomerge.merge.methods.params import WEIGHT
from evomerge.merge.registry import Domain, MergeMethod, Param, check_one_per_source, register

FISHER_WEIGHT = dataclasses.replace(WEIGHT, domain=Domain(0.0, math.inf))  # λ_k: a precision's weight is ≥ 0
EPSILON = Param("epsilon", 1e-6, domain=Domain(0.0, math.inf))  # floor added to every Fisher entry


def fisher(base: Tensor | None, sources: Sequence[Tensor], *, weight: Sequence[float], epsilon: float = 1e-6,
           fishers: Sequence[Tensor] | None = None) -> Tensor:
    """θ* = Σ_k w_k (F_k + ε) θ_k / Σ_k w_k (F_k + ε) elementwise with ``fishers`` (one per source, each of the
    tensor's shape); the weighted mean without. The base is not used."""
    mean = linear(base, sources, weight=weight)
    if fishers is None:
        return mean
    check_fishers(sources, fishers)
    dtype = mean.dtype
    numerator, denominator = torch.zeros_like(mean), torch.zeros_like(mean)
    for tensor, information, w in zip(sources, fishers, weight, strict=True):  # one source's precision at a time
        precision = information.to(dtype).add(epsilon).mul_(float(w))
        denominator.add_(precision)
        numerator.addcmul_(precision, tensor.to(dtype))
    return torch.where(denominator > 0, numerator.div_(denominator), mean)


def check_fishers(sources: Sequence[Tensor], fishers: Sequence[Tensor]) -> None:
    """One Fisher of the tensor's shape per source, else a one-line EvomergeError."""
    check_one_per_source("fisher", "Fisher tensors", fishers, sources)
    shape = list(sources[0].shape)
    for k, information in enumerate(fishers):
        if list(information.shape) != shape:
            raise EvomergeError(f"fisher: source {k}'s Fisher has shape {list(information.shape)}, but the tensor has "
                                f"shape {shape}; recompute the statistics for these models")


# Peak: the K Fishers read for the tensor; the mean, Σ w(F + ε)θ, Σ w(F + ε), one source's precision, the result
# and the mask (ru_maxrss on 2048 × 4096, K = 3, float32 or bf16 sources: 5.25 copies besides the Fishers).
register(MergeMethod("fisher", fisher, (FISHER_WEIGHT, EPSILON), needs_base=False, mergekit=False,
                     statistics="fisher", eager_copies=(1, 6),
                     doc="Entry by entry, the sources' average weighted by their diagonal Fisher information on "
                         "calibration data (Fisher-weighted averaging); tensors without one averaged."))
