"""Statistics of calibration data per source and kind — RegMean's input Gram matrices, Fisher merging's diagonal
Fisher — in a folder, one file per kind and source:

    <folder>/<kind>-source<k>.safetensors

holds source k's statistics of that kind (``gram``: ``scoring.gram``, keyed by the linear weight's tensor name;
``fisher``: ``scoring.fisher``, keyed by the parameter's), with what they were computed from in the file's
metadata: the source model's SHA-256 (the one run.json records) and the calibration token sequences' SHA-256,
and the fingerprint of both. A run keeps them in its ``statistics/``
folder; a recipe names such a folder (``statistics:``) for ``evomerge merge``.

Storing (``source_statistics``): a file whose fingerprint matches is read back, never rewritten (resume, export
and every later session reuse it); a missing file, a damaged one, or one for other data or another model is
recomputed and replaced (written to a temporary sibling, then renamed). The computing is the caller's (a
worker: it holds a live model on the run's device). Each file has a lock of its own (``flock`` on
``.<kind>-source<k>.lock`` in the folder, removed by its holder): workers that need the same statistics at once share
the sources (``every_source_statistics``: each takes the sources nobody is computing, then waits for and reads the
others), and two kinds are computed side by side. Reading for a merge
(``load_statistics``) checks each file against the source it is for; a merge never computes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from evomerge.errors import EvomergeError
from evomerge.files import exclusive
from evomerge.merge.registry import Statistics
from evomerge.sources.pool import SourcePool

Tensors = Mapping[str, Tensor]  # tensor name -> its statistics (a Gram matrix in × in, a Fisher of its shape)
DESCRIPTIONS: dict[Statistics, str] = {"gram": "input Gram matrices", "fisher": "diagonal Fisher information"}


def fingerprint(source_sha256: str, data_sha256: str) -> str:
    """What a statistics file was computed from: one model and one calibration data set."""
    return hashlib.sha256(f"{source_sha256}\n{data_sha256}".encode()).hexdigest()


def statistics_path(folder: Path, kind: Statistics, source: int) -> Path:
    return folder / f"{kind}-source{source}.safetensors"


def stored_metadata(path: Path) -> dict[str, str]:
    """The file's metadata; empty when there is no readable file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (FileNotFoundError, SafetensorError, OSError):
        return {}


def source_statistics(folder: Path, kind: Statistics, source: int, source_sha256: str, data_sha256: str,
                      compute: Callable[[], Tensors]) -> dict[str, Tensor]:
    """Source ``source``'s statistics of ``kind`` for this model and data: read back when ``folder`` holds them,
    else ``compute()``d and stored (after waiting for another process computing them)."""
    stats = _source_statistics(folder, kind, source, source_sha256, data_sha256, compute, wait=True)
    assert stats is not None
    return stats


def every_source_statistics(folder: Path, kind: Statistics, sources: Sequence[str], data_sha256: str,
                            compute: Callable[[int], Tensors]) -> None:
    """Every source's statistics of ``kind`` in ``folder`` (``sources``: their SHA-256; ``compute(k)``: source k's):
    first each source no other process is computing, then, waiting, the others — so that workers needing them at
    once compute different sources."""
    pending = list(range(len(sources)))
    while pending:
        busy = [k for k in pending if _source_statistics(folder, kind, k, sources[k], data_sha256,
                                                         functools.partial(compute, k), wait=False) is None]
        if busy:
            source_statistics(folder, kind, busy[0], sources[busy[0]], data_sha256, functools.partial(compute, busy[0]))
        pending = busy[1:]


def _source_statistics(folder: Path, kind: Statistics, source: int, source_sha256: str, data_sha256: str,
                       compute: Callable[[], Tensors], *, wait: bool) -> dict[str, Tensor] | None:
    """``source_statistics``; with ``wait`` False, None at once where another process holds the file's lock."""
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / f".{kind}-source{source}.lock", wait) as held:
        return _read_or_compute(statistics_path(folder, kind, source), source_sha256, data_sha256, compute) if held \
            else None


def _read_or_compute(path: Path, source_sha256: str, data_sha256: str,
                     compute: Callable[[], Tensors]) -> dict[str, Tensor]:
    wanted = fingerprint(source_sha256, data_sha256)
    if stored_metadata(path).get("fingerprint") == wanted:
        return load_file(str(path))
    start = time.perf_counter()
    tensors = {name: t.contiguous() for name, t in compute().items()}
    seconds = time.perf_counter() - start
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")  # workers of one node never share one
    save_file(tensors, str(partial), metadata={"fingerprint": wanted, "source_sha256": source_sha256,
                                            "data_sha256": data_sha256, "seconds": f"{seconds:.3f}"})
    os.replace(partial, path)
    return tensors


@dataclass(frozen=True)
class StatisticsCost:
    """What a folder's statistics cost to compute (their files' metadata): for reports."""

    sources: int
    seconds: float  # the computations' wall time, summed over sources
    bytes: int  # on disk


def statistics_cost(folder: Path, kind: Statistics) -> StatisticsCost | None:
    """The cost of the statistics of ``kind`` that ``folder`` holds; None when it holds none."""
    paths = sorted(folder.glob(f"{kind}-source*.safetensors")) if folder.is_dir() else []
    metas = [stored_metadata(p) for p in paths]
    if not any(metas):
        return None
    return StatisticsCost(sum(1 for m in metas if m), sum(float(m.get("seconds", 0.0)) for m in metas),
                          sum(p.stat().st_size for p, m in zip(paths, metas, strict=True) if m))


@dataclass(frozen=True)
class StatisticsFiles:
    """Every source's statistics file of one kind, checked against its source; a tensor's statistics are read when
    it is merged (memory-mapped), so a merge holds K of one tensor's at a time, not every tensor's."""

    folder: Path
    kind: Statistics
    names: tuple[frozenset[str], ...]  # per source, the tensors its file has statistics of

    def of(self, name: str) -> list[Tensor] | None:
        """The sources' statistics of tensor ``name``; None for a tensor no source has them of (no linear weight,
        for Gram matrices). A tensor some sources' statistics lack is an error: they come from another model."""
        having = [name in names for names in self.names]
        if not any(having):
            return None
        if not all(having):
            k = having.index(False)
            raise EvomergeError(f"no {self.kind} statistics of {name} in source {k}'s file "
                                f"({statistics_path(self.folder, self.kind, k)}); recompute them for these models")
        out = []
        for k in range(len(self.names)):
            with safe_open(str(statistics_path(self.folder, self.kind, k)), framework="pt") as f:
                out.append(f.get_tensor(name))
        return out


def load_statistics(folder: Path, kind: Statistics, pool: SourcePool) -> StatisticsFiles:
    """Every source's statistics of ``kind`` in ``folder``, each file checked against the model it is for."""
    names = []
    for k, source in enumerate(pool.sources):
        path = statistics_path(folder, kind, k)
        meta = stored_metadata(path)
        if not meta:
            raise EvomergeError(f"no statistics for source {k} ({source.path}) in {folder}: expected a readable "
                                f"{path.name} (a run's statistics/ folder holds them)")
        if meta.get("source_sha256") != source.fingerprint:
            raise EvomergeError(f"{path} was computed for another model than source {k} ({source.path}); point "
                                f"'statistics:' at the statistics of these sources")
        with safe_open(str(path), framework="pt") as f:
            names.append(frozenset(f.keys()))
    return StatisticsFiles(folder, kind, tuple(names))
