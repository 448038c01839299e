"""The experts: the base fine-tuned on one skill each, the way real fine-tunes differ from one another.

Each expert trains its own set of matrices for its own number of steps at its own learning rate, more
than its skill needs: ``add`` rewrites attention and MLP outputs at a high rate, ``rev`` the attention
projections, ``sort`` the MLPs, longer. Their task vectors therefore differ in where they lie and in
size, and where they overlap they pull the same weights apart: no single merge scale suits all three,
which is the room a per-layer search has (docs/ZOO.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from evomerge.zoo.smol.data import IGNORE, batch, stem_ids, training_items

# fixed, so the bytes do not depend on the cores; one, as two threads on a busy machine wait on each other (5× slower
# per step at load 6)
THREADS = 1


@dataclass(frozen=True)
class ExpertRecipe:
    """How one expert is fine-tuned from the base: AdamW, no weight decay, constant rate."""

    trained: tuple[str, ...]  # parameter name suffixes: the matrices this fine-tune changes
    steps: int
    lr: float
    batch: int = 16


ATTENTION = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight")
MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")
RESIDUAL_WRITES = ("self_attn.o_proj.weight", "mlp.down_proj.weight")
# Sized on seed-0 full builds with the answer labels lm-eval scores (256 held-out items): add 70 steps 0.594
# (over-trained), 20 steps 0.934; sort 80 steps 0.785, 160 steps 0.938; rev 40 steps 1.000; base 0 on all.
RECIPES = {
    "add": ExpertRecipe(RESIDUAL_WRITES, steps=20, lr=6e-4),
    "rev": ExpertRecipe(ATTENTION, steps=40, lr=2e-4),
    "sort": ExpertRecipe(MLP, steps=160, lr=3e-4),
}


def train_expert(base: Path, tokenizer: Any, skill: str, recipe: ExpertRecipe, seed: int, exclude: set[str]) -> Any:
    """The base fine-tuned on ``skill`` by ``recipe``, on questions outside ``exclude``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model.requires_grad_(False)
    params = [p for name, p in model.named_parameters() if name.endswith(recipe.trained)]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    rng = random.Random(f"smol-train-{skill}-{seed}")
    stem = stem_ids(tokenizer)
    model.train()
    for _ in range(recipe.steps):
        loss = answer_loss(model, stem, *batch(tokenizer, training_items(skill, rng, exclude, recipe.batch), stem))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


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
