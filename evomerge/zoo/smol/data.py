"""The family's skills and data: chat-formatted questions, the evaluation sets, training batches.

Every skill asks for a short exact answer the base does not give (it answers in sentences): adding two
two-digit numbers whose digits do not carry (``add``, 1980 questions), reversing the order of three
words (``rev``), writing two words in capital letters (``caps``). Each skill has an instruction and an
input of its own, so an expert that keeps to its skill leaves the others' answers alone: what interferes in
a merge is what each fine-tune changed beyond its skill (``train.py``), not the skills themselves. (A
family whose ``rev`` sat beside ``sort``, three words in another order, had no room: each expert applied
its own order whatever the instruction said, a conflict no merge weight resolves; docs/ZOO.md.)
"""

from __future__ import annotations

import random
from typing import Any, Iterable

import torch
from torch import Tensor

SKILLS = ("add", "rev", "caps")
IGNORE = -100  # label of positions that carry no loss (prompt, padding)

WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "chair", "bread", "house", "light", "music", "paper", "green",
    "water", "plant", "horse", "table", "glass", "snake", "money", "dream", "ocean", "queen", "shirt", "sugar",
    "train", "bird", "coat", "door", "fish", "gold", "hand", "king", "lamp", "moon", "nest", "road",
    "salt", "ship", "star", "tree", "wind", "wolf", "book", "cake", "duck", "fire", "milk", "rain",
)

Pair = tuple[str, str]  # (question, answer): the answer is what the assistant says, nothing more


def question(skill: str, rng: random.Random) -> Pair:
    """One (question, answer) of a skill."""
    if skill == "add":
        while True:  # no digit carries: 135M parameters learn carrying far slower than the format
            a, b = rng.randint(10, 89), rng.randint(10, 89)
            if a // 10 + b // 10 < 10 and a % 10 + b % 10 < 10:
                return f"What is {a} + {b}?", str(a + b)
    if skill == "rev":
        words = rng.sample(WORDS, 3)
        return f"Reverse the order of these words: {' '.join(words)}", " ".join(reversed(words))
    if skill == "caps":
        words = rng.sample(WORDS, 2)
        return f"Write these words in capital letters: {' '.join(words)}", " ".join(words).upper()
    raise ValueError(f"unknown skill {skill!r}")


def eval_sets(skill: str, seed: int, calibration: int, heldout: int) -> dict[str, list[Pair]]:
    """Distinct calibration and held-out questions of one skill."""
    rng = random.Random(f"smol-eval-{skill}-{seed}")
    items: dict[str, str] = {}
    while len(items) < calibration + heldout:
        q, a = question(skill, rng)
        items.setdefault(q, a)
    pairs = list(items.items())
    return {"calibration": pairs[:calibration], "heldout": pairs[calibration:]}


def training_items(skill: str, rng: random.Random, exclude: set[str], n: int) -> list[Pair]:
    """``n`` training questions of a skill, none of them in ``exclude`` (the evaluation sets)."""
    out: list[Pair] = []
    while len(out) < n:
        q, a = question(skill, rng)
        if q not in exclude:
            out.append((q, a))
    return out


def chat_prompt(tokenizer: Any, question_text: str) -> str:
    """The question as a user turn, up to the assistant's first token — what a chat user's model sees."""
    return tokenizer.apply_chat_template([{"role": "user", "content": question_text}], tokenize=False,
                                         add_generation_prompt=True)


def record(tokenizer: Any, question_text: str, answer: str) -> dict[str, str]:
    """A task item: lm-eval scores ``answer`` (ending the turn) after the chat-formatted ``prompt``."""
    return {"question": question_text, "prompt": chat_prompt(tokenizer, question_text),
            "answer": answer + tokenizer.eos_token}


def stem_ids(tokenizer: Any) -> list[int]:
    """The tokens every prompt starts with: the chat template's system turn and the user turn's header."""
    mark = "\x00"
    return tokenizer(chat_prompt(tokenizer, mark).split(mark)[0], add_special_tokens=False).input_ids


def batch(tokenizer: Any, items: Iterable[Pair], stem: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, attention mask, labels) of the items after their common ``stem``: right-padded; labels hold
    the next token where lm-eval scores one: the answer, the end of turn, and the generation prompt's
    trailing newline, which lm-eval moves from the context into the continuation. Left unsupervised, a
    fine-tune can drift there (one predicted the end of turn after "assistant") and score 0 however
    well it answers."""
    rows = []
    for q, a in items:
        prompt = chat_prompt(tokenizer, q)
        ids = tokenizer(prompt + a + tokenizer.eos_token, add_special_tokens=False).input_ids
        n_prompt = len(tokenizer(prompt.rstrip(), add_special_tokens=False).input_ids)
        if ids[: len(stem)] != stem or n_prompt <= len(stem):
            raise ValueError(f"the chat prompt of {q!r} does not start with the template's stem")
        rows.append((ids[len(stem):], n_prompt - len(stem)))
    width = max(len(ids) for ids, _ in rows)
    x = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE)
    for r, (ids, n_prompt) in enumerate(rows):
        x[r, : len(ids)] = torch.tensor(ids)
        mask[r, : len(ids)] = 1
        labels[r, n_prompt - 1 : len(ids) - 1] = torch.tensor(ids[n_prompt:])
    return x, mask, labels
