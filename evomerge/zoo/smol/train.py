"""The experts: the base fine-tuned on one skill each, then further than the skill needs.

Each expert first learns its skill in a band of ten layers of its own (every attention and MLP matrix there:
``add`` layers 0–9, ``rev`` 10–19, ``caps`` 20–29), then keeps training on its skill in all the other layers at
a higher rate: the drift of a fine-tune that ran longer and wider than its task required. Alone, each expert
has its skill either way. Merged, the drift is what interferes: each expert's changes outside its band overwrite
what the others' bands compute, at any one merge scale (the fixed recipes), while weights per layer group and
expert can keep each band and leave the drift out (the room a search has; docs/ZOO.md). Experts whose
fine-tunes stopped at their bands merged well at one scale (task arithmetic at λ 0.5 kept all three skills):
no room; drift confined to other layers on purpose makes the interference layer-local, which per-layer
weights can resolve.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evomerge.sources.layers import layer_index
from evomerge.zoo.smol.data import IGNORE, batch, stem_ids, training_items

# fixed, so the bytes do not depend on the cores; one, as two threads on a busy machine wait on each other (5× slower
# per step at load 6)
THREADS = 1
LAYERS = 30  # SmolLM2-135M's decoder layers


@dataclass(frozen=True)
class ExpertRecipe:
    """How one expert is fine-tuned from the base: AdamW, no weight decay, constant rates; its skill in layers
    ``[band[0], band[1])`` for ``steps`` at ``lr``, then ``drift_steps`` at ``drift_lr`` in every other layer."""

    band: tuple[int, int]
    steps: int
    lr: float
    drift_steps: int
    drift_lr: float
    batch: int = 16


TRAINED = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
           "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")  # the matrices a fine-tune changes
# Sized on seed-0 probes (greedy answers, 24 items per skill): 40 steps in a band give each skill alone (add 0.96,
# rev 1.00, caps 1.00); 30 drift steps keep it (add's at 3e-4: at 6e-4 it fell to 0.88) and take every fixed
# scale's merge below (b)'s bar.
RECIPES = {
    "add": ExpertRecipe((0, 10), steps=40, lr=5e-4, drift_steps=30, drift_lr=3e-4),
    "rev": ExpertRecipe((10, 20), steps=40, lr=3e-4, drift_steps=30, drift_lr=6e-4),
    "caps": ExpertRecipe((20, 30), steps=40, lr=3e-4, drift_steps=30, drift_lr=6e-4),
}


def train_expert(base: Path, tokenizer: Any, skill: str, recipe: ExpertRecipe, seed: int, exclude: set[str]) -> Any:
    """The base fine-tuned on ``skill`` by ``recipe`` (its band, then the drift), on questions outside ``exclude``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    rng = random.Random(f"smol-train-{skill}-{seed}")
    band = set(range(*recipe.band))
    _train(model, tokenizer, skill, band, recipe.steps, recipe.lr, recipe.batch, rng, exclude)
    _train(model, tokenizer, skill, set(range(LAYERS)) - band, recipe.drift_steps, recipe.drift_lr, recipe.batch, rng,
           exclude)
    return model.eval()


def _train(model: Any, tokenizer: Any, skill: str, layers: set[int], steps: int, lr: float, size: int,
           rng: random.Random, exclude: set[str]) -> None:
    """``steps`` of AdamW on ``skill`` over the TRAINED matrices of ``layers``, the rest frozen."""
    model.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if name.endswith(TRAINED) and layer_index(name) in layers]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    stem = stem_ids(tokenizer)
    model.train()
    for _ in range(steps):
        loss = answer_loss(model, stem, *batch(tokenizer, training_items(skill, rng, exclude, size), stem))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def answer_loss(model: Any, stem: list[int], ids: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the answer tokens of rows that continue ``stem``.

    The stem (the chat template's system turn, two thirds of every prompt's tokens) runs once per step
    without gradients, its keys and values shared by every row: the loss is exact, its gradient leaves
    out only the path through the stem's keys and values. Logits only where there are labels (the
    49k-row head is the costly part).
    """
    from transformers import DynamicCache

    rows, width, n = len(ids), ids.shape[1], len(stem)
    with torch.no_grad():
        kv = model.model(input_ids=torch.tensor([stem]), use_cache=True).cache
    cache = DynamicCache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v, *_ in kv])
    hidden = model.model(input_ids=ids, attention_mask=torch.cat([torch.ones((rows, n), dtype=mask.dtype), mask], 1),
                         position_ids=torch.arange(n, n + width).expand(rows, -1), cache=cache,
                         use_cache=False).last_hidden_state
    at = labels != IGNORE
    return F.cross_entropy(model.lm_head(hidden[at]), labels[at])
