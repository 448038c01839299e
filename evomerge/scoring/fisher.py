"""A model's diagonal Fisher information on the calibration prompts: the statistics Fisher merging weighs with.

For every parameter, F = (1/N) Σ_i g_i², g_i = ∇ log p(x_i) the gradient of the log-likelihood of calibration
sequence i (its tokens after the first, each given the ones before: the texts ``scoring.gram.calibration_tokens``
gives, the same data and fingerprint as RegMean's statistics), over the N sequences of two tokens or more.

Which Fisher: the empirical one, on the sequences' own tokens. The paper (and FusionBench, for classifiers)
takes the expectation over the model's own predictions; over a vocabulary that is one backward pass per
candidate token, and one sampled token per position instead makes the statistics random, so a file would no
longer be a function of the model and the data its fingerprint names. The calibration texts are the tasks'
prompts and answers, the data the merge should fit: the empirical Fisher weighs each parameter by how much
those texts' likelihood depends on it.

Per example, not per batch: the square of a batch's summed gradient is not the sum of its examples' squares
(FusionBench squares per batch), so each sequence gets a backward pass of its own — no padding exists to mask.
Gradients come out in the model's dtype and are squared and summed in float32, one accumulator per parameter:
that accumulator, the gradients and one sequence's activations are the memory cost (``accumulator_bytes``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor, nn


def accumulator_bytes(numels: Iterable[int]) -> int:
    """Bytes of ``fisher_diagonals``' float32 accumulators on the model's device: 4 per parameter entry."""
    return sum(4 * n for n in numels)


def fisher_diagonals(model: nn.Module, sequences: Sequence[Sequence[int]]) -> dict[str, Tensor]:
    """``{"<parameter>": F}`` (float32, the parameter's shape) for every parameter of ``model`` on ``sequences``;
    the parameters are left as they were (values and ``requires_grad``)."""
    params = dict(model.named_parameters())
    flags = {name: p.requires_grad for name, p in params.items()}
    sums = {name: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for name, p in params.items()}
    device = next(iter(params.values())).device
    examples = 0
    try:
        for p in params.values():
            p.requires_grad_(True)
        with torch.enable_grad():
            for seq in sequences:
                if len(seq) < 2:  # nothing predicted: no log-likelihood
                    continue
                ids = torch.tensor([list(seq)], dtype=torch.long, device=device)
                logits = model(input_ids=ids).logits[0, :-1].float()
                loglik = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None]).sum()
                grads = torch.autograd.grad(loglik, list(params.values()), allow_unused=True)
                for total, grad in zip(sums.values(), grads, strict=True):
                    if grad is not None:  # a parameter the forward never used has zero gradient
                        total.add_(grad.float().square())
                examples += 1
    finally:
        for name, p in params.items():
            p.requires_grad_(flags[name])
    return {name: total.div_(max(examples, 1)) for name, total in sums.items()}
