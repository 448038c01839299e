"""Input Gram matrices of a model's linear layers on the calibration prompts: the statistics RegMean merges with.

For every ``nn.Linear`` whose weight the model names ``<module>.weight``, G = XᵀX / N over the N tokens of
the calibration requests (each request's prompt, and its continuation for loglikelihood requests: the text
the scored forward sees), X the rows the layer received. The mean rather than the sum keeps the entries at
the activations' scale whatever N is (RegMean's merge is the same either way: every source sees the same
tokens). Each batch's XᵀX is a float32 product on the model's device, summed into a float64 accumulator:
a float32 running sum over 10⁵–10⁶ tokens loses the low digits of the small entries, and those feed an
ill-conditioned solve. The accumulators are the memory cost: Σ in² · 8 bytes over the linear layers
(per layer of a Llama, four hidden² and one intermediate² matrices).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from evomerge.scoring.scorer import Scorer


def calibration_tokens(scorer: Scorer, most: int | None = None) -> list[list[int]]:
    """The token ids of the distinct request texts of ``scorer``, in request order, cut to the model's last
    ``max_length`` tokens as the scored forward cuts them: every text, or ``most`` of them spread evenly over
    the request order (so each task keeps its share)."""
    seen: dict[str, None] = {}
    for request_type, instances in scorer.requests.items():
        for instance in instances:
            text = instance.args[0] + (instance.args[1] if request_type == "loglikelihood" else "")
            seen.setdefault(text, None)
    texts = list(seen)
    if most is not None and most < len(texts):
        texts = [texts[i * len(texts) // most] for i in range(most)]
    limit = scorer.lm.max_length
    return [list(scorer.lm.tok_encode(text))[-limit:] for text in texts]


def data_fingerprint(sequences: Sequence[Sequence[int]]) -> str:
    """SHA-256 of the token sequences the statistics come from (the calibration data as the model reads it)."""
    return hashlib.sha256(json.dumps([list(s) for s in sequences]).encode()).hexdigest()


def accumulator_bytes(in_features: Iterable[int]) -> int:
    """Bytes of ``gram_matrices``' float64 accumulators on the model's device: in² · 8 per linear layer."""
    return sum(8 * n * n for n in in_features)


def gram_matrices(model: nn.Module, sequences: Sequence[Sequence[int]], *, batch_size: int = 8) -> dict[str, Tensor]:
    """``{"<module>.weight": XᵀX / N}`` (float32, in × in) for every linear layer of ``model`` on ``sequences``."""
    device = next(model.parameters()).device
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    sums = {name: torch.zeros(m.in_features, m.in_features, dtype=torch.float64, device=device)
            for name, m in linears.items()}
    tokens = 0
    mask = torch.ones(0, dtype=torch.bool)

    def accumulate(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            rows = args[0][mask].float()  # real tokens only: padding is masked out
            sums[name].add_(rows.T @ rows)
        return hook

    handles = [m.register_forward_hook(accumulate(name)) for name, m in linears.items()]
    try:
        with torch.no_grad():
            for start in range(0, len(sequences), batch_size):
                batch = sequences[start:start + batch_size]
                width = max(len(s) for s in batch)
                ids = torch.zeros(len(batch), width, dtype=torch.long, device=device)
                mask = torch.zeros(len(batch), width, dtype=torch.bool, device=device)
                for i, seq in enumerate(batch):
                    ids[i, :len(seq)] = torch.tensor(seq, dtype=torch.long)
                    mask[i, :len(seq)] = True
                model(input_ids=ids)  # right padding under causal attention: real tokens never see it
                tokens += int(mask.sum())
    finally:
        for handle in handles:
            handle.remove()
    return {f"{name}.weight": (total / max(tokens, 1)).float() for name, total in sums.items()}
