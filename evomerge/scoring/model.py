"""Loading a model folder for scoring: offline, safetensors unless pickle is allowed, no remote code, every file checked
first (``sources.folder.check_loadable``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import EvomergeError
from evomerge.sources.folder import check_loadable

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_causal_lm(path: str | Path, *, device: str = "cpu", allow_pickle: bool = False,
                   trust_remote_code: bool = False,
                   dtype: Any = None, tokenizer: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) from an HF folder, in eval mode on ``device``.

    ``dtype``: the weights' dtype (None: transformers' default); ``tokenizer``: the folder whose
    tokenizer (and chat template) to use, when not the model's own (an instruct source's, say).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # evomerge shows its own progress; per-load bars are noise
    path = Path(path)
    tokenizer_path = Path(tokenizer) if tokenizer is not None else path
    if not (path / "config.json").is_file():
        raise EvomergeError(f"not a model folder (no config.json): {path}")
    if not any((tokenizer_path / f).is_file() for f in TOKENIZER_FILES):
        raise EvomergeError(f"{tokenizer_path} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): copy the base "
                            "model's tokenizer into it")
    check_loadable(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    has_safetensors = any(path.glob("*.safetensors"))
    on_device = {"device_map": {"": device}} if device != "cpu" else {}  # straight to the GPU: no host copy
    model = AutoModelForCausalLM.from_pretrained(
        path, use_safetensors=has_safetensors, trust_remote_code=trust_remote_code, local_files_only=True,
        **({"dtype": dtype} if dtype is not None else {}), **on_device,
    )
    tok = AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code, local_files_only=True)
    return model.to(device).eval(), tok  # type: ignore[arg-type]  # transformers' decorator on .to hides its signature
