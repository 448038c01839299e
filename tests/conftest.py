"""Shared fixtures: tiny model families built in code (no hub, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def save_tiny_llama(path: Path, seed: int, *, base: Path | None = None, scale: float = 0.05) -> Path:
    """A 2-layer Llama with random weights; with ``base``, the base plus seeded noise (a 'fine-tune')."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if base is None:
        cfg = LlamaConfig(
            vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(cfg)
    else:
        model = LlamaForCausalLM.from_pretrained(base)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * scale)
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """base + three sources derived from it, as HF folders."""
    root = tmp_path_factory.mktemp("tiny_family")
    base = save_tiny_llama(root / "base", seed=0)
    family = {"base": base}
    for i, name in enumerate(["a", "b", "c"], start=1):
        family[name] = save_tiny_llama(root / name, seed=i, base=base)
    return family
