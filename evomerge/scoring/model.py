"""Loading a model folder for scoring: offline, safetensors unless pickle is allowed, no remote code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import EvomergeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_causal_lm(path: str | Path, *, device: str = "cpu", allow_pickle: bool = False, trust_remote_code: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF folder, in eval mode on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # evomerge shows its own progress; per-load bars are noise
    path = Path(path)
    if not (path / "config.json").is_file():
        raise EvomergeError(f"not a model folder (no config.json): {path}")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise EvomergeError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): copy the base model's tokenizer into it")
    has_safetensors = any(path.glob("*.safetensors"))
    if not has_safetensors and not allow_pickle:
        raise EvomergeError(f"{path} has no .safetensors weights; convert it to safetensors or pass --allow-pickle")
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=has_safetensors, trust_remote_code=trust_remote_code, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    return model.to(device).eval(), tokenizer
