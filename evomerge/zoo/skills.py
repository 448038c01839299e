"""The zoo's skills as string formats, their evaluation sets, and training batches.

An item is ``<format>:<letters>=`` (the prompt) and the transformed letters plus ``.`` (the
answer): the terminator makes a greedy exact match also check that the model stops. The experts'
skills (rev, sort, up, dup) are learnable in a few hundred steps and not guessable (docs/ZOO.md);
copy and shift appear only in the base mixture and among the anchored experts' KL formats, so the
base knows formats that no expert owns.
"""

from __future__ import annotations

import random
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

from evomerge.zoo.tokenizer import PAD, encode

LETTERS = "abcdefghij"  # ten letters: sorting and doubling 26 took the base 800+ steps to reach 25%
MIN_LEN, MAX_LEN = 3, 7
TERMINATOR = "."
FORMATS: dict[str, Callable[[str], str]] = {
    "rev": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "up": str.upper,
    "dup": lambda s: s + s,
    "copy": lambda s: s,
    "shift": lambda s: "".join(LETTERS[(LETTERS.index(c) + 1) % len(LETTERS)] for c in s),
}
EXPERT_SKILLS = ("rev", "sort", "up", "dup")
IGNORE = -100  # label of positions that predict no answer token (torch's cross-entropy default)

Item = dict[str, str]


def make_item(fmt: str, letters: str) -> Item:
    return {"prompt": f"{fmt}:{letters}=", "answer": FORMATS[fmt](letters) + TERMINATOR}


def random_letters(rng: random.Random) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(MIN_LEN, MAX_LEN)))


def eval_sets(seed: int, n_calibration: int, n_heldout: int) -> dict[str, dict[str, list[Item]]]:
    """Per expert skill, calibration and held-out items on distinct strings (disjoint sets)."""
    out = {}
    for fmt in EXPERT_SKILLS:
        rng = random.Random(f"zoo-eval-{seed}-{fmt}")
        strings: dict[str, None] = {}  # an insertion-ordered set: the order is deterministic
        while len(strings) < n_calibration + n_heldout:
            strings[random_letters(rng)] = None
        items = [make_item(fmt, s) for s in strings]
        out[fmt] = {"calibration": items[:n_calibration], "heldout": items[n_calibration:]}
    return out


class Sampler:
    """Training items from a mixture of formats, never on a string of any evaluation set."""

    def __init__(self, mixture: Mapping[str, float], seed: str, exclude: Iterable[str] = ()) -> None:
        self.formats, self.weights = list(mixture), list(mixture.values())
        self.rng = random.Random(seed)
        self.exclude = set(exclude)

    def items(self, n: int) -> list[Item]:
        out = []
        for fmt in self.rng.choices(self.formats, self.weights, k=n):
            letters = random_letters(self.rng)
            while letters in self.exclude:
                letters = random_letters(self.rng)
            out.append(make_item(fmt, letters))
        return out


def letters_of(items: Iterable[Item]) -> set[str]:
    return {it["prompt"].split(":", 1)[1][:-1] for it in items}


def batch(items: list[Item]) -> tuple[Tensor, Tensor]:
    """(ids, labels), right-padded; ``labels[i, t]`` is the answer token position t predicts, else IGNORE.

    One layout serves the training loss and greedy exact match. Right padding needs no attention
    mask: under causal attention no real token sees a pad.
    """
    pairs = [(encode(it["prompt"]), encode(it["answer"])) for it in items]
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(items), width), PAD, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        ids[i, : len(p) + len(a)] = torch.tensor(p + a)
        labels[i, len(p) - 1 : len(p) + len(a) - 1] = torch.tensor(a)
    return ids, labels
