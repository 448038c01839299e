"""Statistics of calibration data per source, kept in the run folder: computed once per source and run, reused.

    populations/<name>/statistics/gram-source<k>.safetensors

holds source k's input Gram matrices (``scoring.gram``), with the fingerprint they were computed for in the
file's metadata: SHA-256 of the source model (the one run.json records) and of the calibration token sequences.
A file whose fingerprint matches is read back, never rewritten (resume, export and every later session reuse
it); a missing file or one for other data or another model is recomputed and replaced (written to a temporary
sibling, then renamed). The computing is the caller's (a worker: it holds a live model on the run's device).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Mapping

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

STATISTICS = "statistics"  # the run folder's sub-folder


def fingerprint(source_sha256: str, data_sha256: str) -> str:
    """What a statistics file was computed from: one model and one calibration data set."""
    return hashlib.sha256(f"{source_sha256}\n{data_sha256}".encode()).hexdigest()


def gram_path(run_dir: Path, source: int) -> Path:
    return run_dir / STATISTICS / f"gram-source{source}.safetensors"


def stored_fingerprint(path: Path) -> str | None:
    """The fingerprint in the file's metadata; None when there is no readable file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except (FileNotFoundError, SafetensorError, OSError):
        return None


def source_grams(run_dir: Path, source: int, wanted: str, compute: Callable[[], Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Source ``source``'s Gram matrices for fingerprint ``wanted``: read back when the run folder holds them,
    else ``compute()``d and stored."""
    path = gram_path(run_dir, source)
    if stored_fingerprint(path) == wanted:
        return load_file(str(path))
    grams = {name: t.contiguous() for name, t in compute().items()}
    path.parent.mkdir(exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    save_file(grams, str(partial), metadata={"fingerprint": wanted})
    os.replace(partial, path)
    return grams
