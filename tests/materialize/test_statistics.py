"""Statistics in a folder: computed once per kind and source, reused while their fingerprint holds, else recomputed;
read for a merge only when each file is for its source."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.materialize.statistics import (
    StatisticsFiles,
    every_source_statistics,
    load_statistics,
    source_statistics,
    statistics_path,
)
from evomerge.sources.pool import SourcePool

DATA, MODEL = "data-sha", "model-sha"
NAME = "model.layers.0.mlp.up_proj.weight"
KINDS = pytest.mark.parametrize("kind", ["gram", "fisher"])


class Compute:
    """A stand-in for the worker's computation that counts its calls."""

    def __init__(self, value: float = 1.0) -> None:
        self.calls, self.value = 0, value

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {NAME: torch.full((3, 3), self.value)}


@KINDS
def test_statistics_are_computed_once_then_read_back_without_rewriting_the_file(tmp_path: Path, kind) -> None:
    compute = Compute()
    first = source_statistics(tmp_path, kind, 0, MODEL, DATA, compute)
    stat = statistics_path(tmp_path, kind, 0).stat()
    again = source_statistics(tmp_path, kind, 0, MODEL, DATA, compute)
    assert compute.calls == 1 and torch.equal(again[NAME], first[NAME])
    after = statistics_path(tmp_path, kind, 0).stat()
    assert (after.st_mtime_ns, after.st_ino) == (stat.st_mtime_ns, stat.st_ino)


def test_workers_that_need_the_same_statistics_at_once_compute_them_once(tmp_path: Path) -> None:
    class Slow(Compute):
        def __call__(self) -> dict[str, torch.Tensor]:
            time.sleep(0.3)  # the other worker asks meanwhile
            return super().__call__()

    compute, got = Slow(), []
    workers = [threading.Thread(target=lambda: got.append(source_statistics(tmp_path, "fisher", 0, MODEL, DATA,
                                                                            compute)))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert compute.calls == 1 and len(got) == 2 and torch.equal(got[0][NAME], got[1][NAME])
    assert [p.name for p in tmp_path.iterdir()] == ["fisher-source0.safetensors"]  # no lock or partial file left



def test_two_kinds_of_statistics_are_computed_at_the_same_time(tmp_path: Path) -> None:
    started = {kind: threading.Event() for kind in ("gram", "fisher")}
    met = {}

    class Meeting(Compute):
        """Computes only once the other kind's computation has started too: kinds taking turns never meet."""

        def __init__(self, kind: str, other: str) -> None:
            super().__init__()
            self.kind, self.other = kind, other

        def __call__(self) -> dict[str, torch.Tensor]:
            started[self.kind].set()
            met[self.kind] = started[self.other].wait(timeout=10)
            return super().__call__()

    workers = [threading.Thread(target=source_statistics, args=(tmp_path, kind, 0, MODEL, DATA, Meeting(kind, other)))
               for kind, other in (("gram", "fisher"), ("fisher", "gram"))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert met == {"gram": True, "fisher": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fisher-source0.safetensors", "gram-source0.safetensors"]


def test_workers_that_need_every_source_at_once_share_the_sources(tmp_path: Path) -> None:
    computed: list[tuple[int, str]] = []  # (source, thread) of each computation

    def compute(source: int) -> dict[str, torch.Tensor]:
        computed.append((source, threading.current_thread().name))
        time.sleep(0.5)  # the other worker looks for a source meanwhile
        return {NAME: torch.full((3, 3), float(source))}

    sources = [f"model-{k}" for k in range(3)]
    workers = [threading.Thread(target=every_source_statistics, args=(tmp_path, "fisher", sources, DATA, compute),
                                name=f"worker-{w}") for w in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(source for source, _ in computed) == [0, 1, 2]  # each source once
    assert {thread for _, thread in computed} == {"worker-0", "worker-1"}  # by both workers
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"fisher-source{k}.safetensors" for k in range(3)]

@KINDS
def test_changed_calibration_data_recomputes_and_replaces_them(tmp_path: Path, kind) -> None:
    source_statistics(tmp_path, kind, 0, MODEL, DATA, Compute(1.0))
    changed = Compute(2.0)
    stats = source_statistics(tmp_path, kind, 0, MODEL, "other-data", changed)
    assert changed.calls == 1 and float(stats[NAME][0, 0]) == 2.0
    reread = source_statistics(tmp_path, kind, 0, MODEL, "other-data", changed)
    assert changed.calls == 1 and float(reread[NAME][0, 0]) == 2.0


@KINDS
def test_a_changed_source_model_recomputes_them(tmp_path: Path, kind) -> None:
    source_statistics(tmp_path, kind, 0, MODEL, DATA, Compute())
    changed = Compute()
    source_statistics(tmp_path, kind, 0, "retrained-model-sha", DATA, changed)
    assert changed.calls == 1


def test_each_source_and_kind_has_a_file_of_its_own(tmp_path: Path) -> None:
    compute = Compute()
    source_statistics(tmp_path, "gram", 0, MODEL, DATA, compute)
    source_statistics(tmp_path, "gram", 1, "source-1-sha", DATA, compute)
    source_statistics(tmp_path, "fisher", 0, MODEL, DATA, compute)
    assert compute.calls == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fisher-source0.safetensors", "gram-source0.safetensors",
                                                          "gram-source1.safetensors"]


def test_a_damaged_file_is_recomputed(tmp_path: Path) -> None:
    source_statistics(tmp_path, "gram", 0, MODEL, DATA, Compute())
    statistics_path(tmp_path, "gram", 0).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    again = Compute()
    source_statistics(tmp_path, "gram", 0, MODEL, DATA, again)
    assert again.calls == 1 and not list(tmp_path.glob(".*partial"))


@KINDS
def test_a_merge_reads_each_sources_statistics_checked_against_that_source(tiny_family, tmp_path: Path, kind) -> None:
    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    for k, source in enumerate(pool.sources):
        source_statistics(tmp_path, kind, k, source.fingerprint, DATA, Compute(float(k + 1)))
    stats = load_statistics(tmp_path, kind, pool).of(NAME)
    assert stats is not None and [float(g[0, 0]) for g in stats] == [1.0, 2.0]


def test_statistics_of_another_model_are_refused_in_one_line(tiny_family, tmp_path: Path) -> None:
    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    source_statistics(tmp_path, "fisher", 0, pool.sources[0].fingerprint, DATA, Compute())
    source_statistics(tmp_path, "fisher", 1, pool.sources[0].fingerprint, DATA, Compute())  # a's model, in b's place
    with pytest.raises(EvomergeError, match="fisher-source1.safetensors was computed for another model than source 1"):
        load_statistics(tmp_path, "fisher", pool)


def test_a_missing_statistics_file_is_refused_in_one_line(tiny_family, tmp_path: Path) -> None:
    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    source_statistics(tmp_path, "gram", 0, pool.sources[0].fingerprint, DATA, Compute())
    with pytest.raises(EvomergeError,
                       match="no statistics for source 1 .* expected a readable gram-source1.safetensors"):
        load_statistics(tmp_path, "gram", pool)


def test_a_tensor_one_sources_statistics_lack_is_refused_and_other_tensors_have_none(tmp_path: Path) -> None:
    files = StatisticsFiles(tmp_path, "gram", (frozenset({NAME}), frozenset()))
    assert files.of("model.norm.weight") is None
    with pytest.raises(EvomergeError, match=f"no gram statistics of {NAME} in source 1's file .*gram-source1"):
        files.of(NAME)


def test_a_folders_statistics_say_what_each_kind_cost_to_compute(tmp_path: Path) -> None:
    from evomerge.materialize.statistics import statistics_cost

    assert statistics_cost(tmp_path / "none", "gram") is None
    source_statistics(tmp_path, "gram", 0, MODEL, DATA, Compute())
    source_statistics(tmp_path, "gram", 1, "source-1-sha", DATA, Compute())
    source_statistics(tmp_path, "fisher", 0, MODEL, DATA, Compute())
    cost = statistics_cost(tmp_path, "gram")
    assert cost is not None and cost.sources == 2 and cost.seconds >= 0.0
    sizes = [statistics_path(tmp_path, "gram", k).stat().st_size for k in (0, 1)]
    assert cost.bytes == sum(sizes)
    fisher = statistics_cost(tmp_path, "fisher")
    assert fisher is not None and fisher.sources == 1
