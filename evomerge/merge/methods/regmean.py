"""RegMean (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models").

A linear layer y = x Wᵀ (torch's convention: W is out × in, x a row of in features) of K sources, each with
the Gram matrix G_k = X_kᵀ X_k (in × in) of the inputs X_k its layer saw on calibration data, is merged into
the W that minimizes Σ_k ‖X_k Wᵀ − X_k W_kᵀ‖²: setting the gradient to zero gives

    W* = (Σ_k W_k G̃_k) (Σ_k G̃_k)⁻¹,

the paper's (Σ G_k)⁻¹ Σ G_k W_k written for W = (paper's W)ᵀ. G̃_k is G_k with its off-diagonal entries
multiplied by α (the paper's regularization toward the diagonal: α = 1 is the exact solution above, α = 0
weighs each input feature apart from the others). The paper tunes α per setting; 0.9 is the default here
(FusionBench uses 0.95 for CLIP, 0.6 for GPT-2). Every other tensor — biases, norms, embeddings, a weight
without statistics — is the sources' simple average, as in the paper.

The solve runs in float64 whatever the inputs: activation Gram matrices of language models are badly
conditioned (a few input features carry most of the energy), and float32 loses the digits the merge needs;
the cost is one in × in factorization per linear weight. The one guard the paper lacks: an input feature
that no source ever saw non-zero (its diagonal entry 0 in every G_k) leaves its column undetermined
(Σ G̃_k is singular); that column takes the sources' mean, the limit of adding ε to each G_k's diagonal.

Gram matrices of the same inputs scale together, so a mean over tokens (X_kᵀX_k / N, what the statistics
store) gives the same W* as the sum when every source saw the same number of tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.merge.registry import Domain, MergeMethod, Param, check_one_per_source, register
from evomerge.merge.sparsify import compute_dtype

ALPHA = Param("alpha", 0.9, domain=Domain(0.0, 1.0))  # off-diagonal scale of each Gram matrix


def regmean(base: Tensor | None, sources: Sequence[Tensor], *, alpha: float = 0.9,
            grams: Sequence[Tensor] | None = None) -> Tensor:
    """W* = (Σ_k W_k G̃_k)(Σ_k G̃_k)⁻¹ for a linear weight with ``grams`` (one in × in matrix per source); the
    sources' mean for a tensor without (``grams`` None). The base is not used."""
    dtype = compute_dtype(sources[0])
    if grams is None:
        return torch.stack([s.to(dtype) for s in sources]).mean(dim=0)
    check_grams(sources, grams)
    features = sources[0].shape[1]
    lhs = torch.zeros(features, features, dtype=torch.float64, device=sources[0].device)  # Σ G̃_k, symmetric
    rhs = torch.zeros(sources[0].shape, dtype=torch.float64, device=sources[0].device)  # Σ W_k G̃_k, out × in
    for weight, gram in zip(sources, grams, strict=True):  # one source's float64 copies at a time
        scaled = scale_off_diagonal(gram.to(torch.float64, copy=True), alpha)
        lhs.add_(scaled)
        rhs.addmm_(weight.to(torch.float64), scaled)
        del scaled
    unseen = torch.diagonal(lhs) == 0  # features no source saw: zero rows and columns of every G_k
    if bool(unseen.any()):  # their columns: Σ_k W_k / K, from diagonal entries K
        lhs[unseen, unseen] = float(len(sources))
        for weight in sources:
            rhs[:, unseen] += weight[:, unseen].to(torch.float64)
    merged = torch.linalg.solve(lhs, rhs.T).T  # W* Σ G̃ = Σ W G̃, Σ G̃ symmetric
    return merged.to(dtype)


def scale_off_diagonal(gram: Tensor, alpha: float) -> Tensor:
    """G̃ = α G + (1 − α) diag(G), in place: the off-diagonal entries scaled by α, the diagonal kept."""
    diagonal = torch.diagonal(gram).clone()
    gram.mul_(alpha)
    torch.diagonal(gram).copy_(diagonal)
    return gram


def check_grams(sources: Sequence[Tensor], grams: Sequence[Tensor]) -> None:
    """One in × in Gram matrix per source of a 2-D weight, else a one-line EvomergeError."""
    shape = tuple(sources[0].shape)
    if len(shape) != 2:
        raise EvomergeError(f"regmean: Gram matrices are for 2-D linear weights, not a tensor of shape {list(shape)}")
    check_one_per_source("regmean", "Gram matrices", grams, sources)
    for k, gram in enumerate(grams):
        if tuple(gram.shape) != (shape[1], shape[1]):
            raise EvomergeError(f"regmean: source {k}'s Gram matrix has shape {list(gram.shape)}, but the weight "
                                f"{list(shape)} takes {shape[1]} inputs; recompute the statistics for these models")


def scratch_bytes(features: int, k: int) -> int:
    """Peak bytes of one linear weight's merge besides its weight-sized copies (``eager_copies``): the K float32
    Gram matrices read for it, and Σ G̃ and one G̃ in float64 (four float32 in × in matrices; ru_maxrss of
    2048 × 4096, 4096 × 2048 and 1024 × 4096 weights, K = 3: at most 4·in² + 4·out·in float32 entries)."""
    return (k + 4) * features * features * 4


register(MergeMethod("regmean", regmean, (ALPHA,), needs_base=False, mergekit=False, statistics="gram",
                     eager_copies=(0, 4),
                     doc="Per linear layer, the weight whose outputs best match every source's on calibration "
                         "inputs (closed form from input Gram matrices); other tensors averaged (RegMean)."))
