"""Statistics of calibration data per source — RegMean's input Gram matrices — in a folder, one file per source:

    <folder>/gram-source<k>.safetensors

holds source k's Gram matrices (``scoring.gram``), keyed by the linear weight's tensor name, with what they
were computed from in the file's metadata: the source model's SHA-256 (the one run.json records) and the
calibration token sequences' SHA-256, and the fingerprint of both. A run keeps them in its ``statistics/``
folder; a recipe names such a folder (``statistics:``) for ``evomerge merge``.

Storing (``source_grams``): a file whose fingerprint matches is read back, never rewritten (resume, export
and every later session reuse it); a missing file, a damaged one, or one for other data or another model is
recomputed and replaced (written to a temporary sibling, then renamed). The computing is the caller's (a
worker: it holds a live model on the run's device). Reading for a merge (``load_grams``) checks each file
against the source it is for; a merge never computes.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.sources.pool import SourcePool

Grams = Mapping[str, Tensor]  # linear weight's tensor name -> its input Gram matrix (in × in)


def fingerprint(source_sha256: str, data_sha256: str) -> str:
    """What a statistics file was computed from: one model and one calibration data set."""
    return hashlib.sha256(f"{source_sha256}\n{data_sha256}".encode()).hexdigest()


def gram_path(folder: Path, source: int) -> Path:
    return folder / f"gram-source{source}.safetensors"


def stored_metadata(path: Path) -> dict[str, str]:
    """The file's metadata; empty when there is no readable file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (FileNotFoundError, SafetensorError, OSError):
        return {}


def source_grams(folder: Path, source: int, source_sha256: str, data_sha256: str,
                 compute: Callable[[], Grams]) -> dict[str, Tensor]:
    """Source ``source``'s Gram matrices for this model and data: read back when ``folder`` holds them, else
    ``compute()``d and stored."""
    path = gram_path(folder, source)
    wanted = fingerprint(source_sha256, data_sha256)
    if stored_metadata(path).get("fingerprint") == wanted:
        return load_file(str(path))
    start = time.perf_counter()
    grams = {name: t.contiguous() for name, t in compute().items()}
    seconds = time.perf_counter() - start
    folder.mkdir(exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # workers of one node never share one
    save_file(grams, str(partial), metadata={"fingerprint": wanted, "source_sha256": source_sha256,
                                            "data_sha256": data_sha256, "seconds": f"{seconds:.3f}"})
    os.replace(partial, path)
    return grams


@dataclass(frozen=True)
class StatisticsCost:
    """What a folder's statistics cost to compute (their files' metadata): for reports."""

    sources: int
    seconds: float  # the computations' wall time, summed over sources
    bytes: int  # on disk


def statistics_cost(folder: Path) -> StatisticsCost | None:
    """The cost of the statistics ``folder`` holds; None when it holds none."""
    paths = sorted(folder.glob("gram-source*.safetensors")) if folder.is_dir() else []
    metas = [stored_metadata(p) for p in paths]
    if not any(metas):
        return None
    return StatisticsCost(sum(1 for m in metas if m), sum(float(m.get("seconds", 0.0)) for m in metas),
                          sum(p.stat().st_size for p, m in zip(paths, metas, strict=True) if m))


@dataclass(frozen=True)
class GramFiles:
    """Every source's statistics file, checked against its source; a linear weight's matrices are read when merged
    (memory-mapped), so a merge holds K matrices of one layer at a time, not every layer's."""

    folder: Path
    names: tuple[frozenset[str], ...]  # per source, the linear weights its file has

    def of(self, name: str) -> list[Tensor] | None:
        """The sources' Gram matrices of tensor ``name``; None for a tensor that is no linear weight (no source
        has one). A linear weight some source's statistics lack is an error: they come from another model."""
        having = [name in names for names in self.names]
        if not any(having):
            return None
        if not all(having):
            k = having.index(False)
            raise EvomergeError(f"no Gram matrix for linear weight {name} in source {k}'s statistics "
                                f"({gram_path(self.folder, k)}); recompute them for these models")
        out = []
        for k in range(len(self.names)):
            with safe_open(str(gram_path(self.folder, k)), framework="pt") as f:
                out.append(f.get_tensor(name))
        return out


def load_grams(folder: Path, pool: SourcePool) -> GramFiles:
    """Every source's statistics in ``folder``, each file checked against the model it is for."""
    names = []
    for k, source in enumerate(pool.sources):
        path = gram_path(folder, k)
        meta = stored_metadata(path)
        if not meta:
            raise EvomergeError(f"no statistics for source {k} ({source.path}) in {folder}: expected a readable "
                                f"{path.name} (a run's statistics/ folder holds them)")
        if meta.get("source_sha256") != source.fingerprint:
            raise EvomergeError(f"{path} was computed for another model than source {k} ({source.path}); point "
                                f"'statistics:' at the statistics of these sources")
        with safe_open(str(path), framework="pt") as f:
            names.append(frozenset(f.keys()))
    return GramFiles(folder, tuple(names))
