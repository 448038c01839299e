"""Experiment trackers, offline: what a search sends to wandb (offline mode) and trackio (local SQLite), read back
from each library's own files; a broken tracker warns once and the run goes on; resume continues the tracker run."""

from __future__ import annotations

import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from evomerge.config.search import load_config
from evomerge.errors import RunStopped
from evomerge.execution.executor import LocalExecutor
from evomerge.run.log import RunLog
from evomerge.run.records import BudgetRecord, TrackerRecord
from evomerge.run.search import Search
from evomerge.run.status import summarize
from evomerge.sources.pool import fingerprint
from evomerge.strategies import Candidate

TASKS = ("tiny_rev", "tiny_dup")


def start_run(tmp_path: Path, family: dict[str, Path], search_config, trackers: list[dict],
              max_evals: int = 4) -> RunLog:
    """A search over scored_family reporting to ``trackers``."""
    config = search_config(tmp_path, family, budget={"max_evals": max_evals},
                           execution={"in_flight": 2, "trackers": trackers})
    cfg = load_config(config)
    return RunLog.create(tmp_path / "run", cfg, {str(p): fingerprint(p) for p in cfg.model_folders})


class TwoGenerations:
    """A stand-in strategy: four distinct candidates, two in generation 0 and two in generation 1 (CMA-ES would
    spend its first dozen candidates on the fixed recipes, all generation 0)."""

    needs_items = False

    def __init__(self, dim: int):
        self.candidates = [Candidate((0.2 * (i + 1),) * dim, operator="scripted", generation=i // 2) for i in range(4)]

    def ask(self) -> Candidate | None:
        return self.candidates.pop(0) if self.candidates else None

    def tell(self, candidate, evaluation) -> None:
        pass


def search(run: RunLog) -> None:
    driver = Search(run, LocalExecutor, quiet=True)
    driver.strategy = TwoGenerations(driver.space.dim)
    driver.run_to_budget()


# --- reading back what wandb wrote offline: its run file is a leveldb-style log of protobuf records ------------

def wandb_records(path: Path) -> Iterator[Any]:
    """The records of a ``run-<id>.wandb`` file: 7-byte header, then 32 KiB blocks of chunks (crc, length, type)."""
    from wandb.proto import wandb_internal_pb2

    data, block, header = path.read_bytes(), 32768, 7
    assert data[:4] == b":W&B"
    pos, chunk = header, b""
    while pos + header <= len(data):
        if block - pos % block < header:  # the block's tail is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + header])
        if kind == 0:
            break
        chunk += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def wandb_run(root: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Every offline session's run id, and all history rows, in order."""
    ids, rows = [], []
    for path in sorted(root.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.append(record.run.run_id)
            elif kind == "history":
                items = record.history.item
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return ids, rows


@pytest.fixture
def wandb() -> Any:
    return pytest.importorskip("wandb", reason="wandb (the track extra) is not installed")


def wandb_config(tmp_path: Path) -> dict:
    return {"library": "wandb", "project": "evomerge-test", "mode": "offline", "dir": str(tmp_path / "tracking")}


def test_wandb_gets_every_candidate_each_generation_and_the_front(tmp_path: Path, scored_family, search_config,
                                                                  wandb) -> None:
    run = start_run(tmp_path, scored_family, search_config, [wandb_config(tmp_path)])
    search(run)
    ids, rows = wandb_run(tmp_path / "tracking")
    candidates = [r for r in rows if "candidate" in r]
    logged = run.candidates()
    assert [r["candidate"] for r in candidates] == [c.index for c in logged] == [0, 1, 2, 3]
    for row, record in zip(candidates, logged, strict=True):
        assert [row[f"objective/{t}"] for t in TASKS] == pytest.approx(record.objectives)
        assert (row["generation"], row["merge_s"], row["score_s"], row["failed"]) == (
            record.generation, record.merge_s, record.score_s, 0)
    generations = [r for r in rows if "gen/tiny_rev/best" in r]
    assert [g["generation"] for g in generations] == sorted({c.generation for c in logged}) == [0, 1]
    first = [c.objectives[0] for c in logged if c.generation == generations[0]["generation"]]
    assert generations[0]["gen/tiny_rev/best"] == pytest.approx(max(first))
    assert generations[0]["gen/tiny_rev/mean"] == pytest.approx(sum(first) / len(first))
    assert any(r.get("front/_type") == "table-file" for r in rows) and any("front_size" in r for r in rows)
    assert ids == [t.run_id for t in run.of_type(TrackerRecord)]


def test_resume_continues_the_same_wandb_run(tmp_path: Path, scored_family, search_config, wandb, capsys) -> None:
    run = start_run(tmp_path, scored_family, search_config, [wandb_config(tmp_path)], max_evals=2)
    search(run)
    again = RunLog.open(run.root)
    again.append(BudgetRecord(4))
    search(again)
    ids, rows = wandb_run(tmp_path / "tracking")
    assert len(ids) == 2 and len(set(ids)) == 1  # two sessions, one tracker run
    assert [r.run_id for r in RunLog.open(run.root).of_type(TrackerRecord)] == ids[:1]
    assert f"trackers   wandb run {ids[0]}" in summarize(RunLog.open(run.root))  # evomerge status names it
    assert [r["candidate"] for r in rows if "candidate" in r] == [0, 1, 2, 3]  # replayed candidates are not sent twice
    assert [r["generation"] for r in rows if "gen/tiny_dup/mean" in r] == [0, 1]  # each generation once
    out, err = capsys.readouterr()
    assert "wandb:" not in out + err  # a quiet search swallows the library's banners and summaries


def test_a_failed_candidate_is_sent_as_failed_without_objectives(tmp_path: Path, scored_family, search_config,
                                                               wandb) -> None:
    broken = {"methods": ["task_arithmetic"], "bounds": {"weight": [1e39, 1e39]}}  # every merge overflows
    config = search_config(tmp_path, scored_family, genome=broken,
                           budget={"max_evals": 2, "stop_after_failures": 2},
                           execution={"trackers": [wandb_config(tmp_path)]})
    cfg = load_config(config)
    run = RunLog.create(tmp_path / "run", cfg, {str(p): fingerprint(p) for p in cfg.model_folders})
    with pytest.raises(RunStopped):
        search(run)
    _, rows = wandb_run(tmp_path / "tracking")
    candidates = [r for r in rows if "candidate" in r]
    assert [(r["candidate"], r["failed"]) for r in candidates] == [(0, 1), (1, 1)]
    assert not any(key.startswith("objective/") for r in candidates for key in r)
    assert [r["front_size"] for r in rows if "front_size" in r] == [0]


def trackio_logs(project: str, name: str) -> list[dict[str, Any]]:
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage.get_logs(project, name)


def test_trackio_gets_every_candidate_and_resume_continues_its_run(tmp_path: Path, scored_family, search_config,
                                                                  trackio_dir: Path) -> None:
    project = f"evomerge-{tmp_path.name}"
    run = start_run(tmp_path, scored_family, search_config, [{"library": "trackio", "project": project}], max_evals=2)
    search(run)
    again = RunLog.open(run.root)
    again.append(BudgetRecord(4))
    search(again)
    (tracker,) = RunLog.open(run.root).of_type(TrackerRecord)
    assert tracker.library == "trackio" and tracker.run_id.startswith("tiny-search-")
    logs = trackio_logs(project, tracker.run_id)
    candidates = [row for row in logs if "candidate" in row]
    assert [row["candidate"] for row in candidates] == [0, 1, 2, 3]
    objectives = [c.objectives[1] for c in again.candidates()]
    assert [row["objective/tiny_dup"] for row in candidates] == pytest.approx(objectives)
    assert any("gen/tiny_dup/mean" in row for row in logs) and any("front_size" in row for row in logs)


def test_a_tracker_that_cannot_start_warns_once_and_the_run_finishes(tmp_path: Path, scored_family, search_config,
                                                                   monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: `import wandb` raises ImportError
    run = start_run(tmp_path, scored_family, search_config, [wandb_config(tmp_path)])
    search(run)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evomerge: warning")]
    assert warnings == [("evomerge: warning: tracker wandb is off for this session (wandb is not installed: "
                         "pip install 'evomerge[track]')")]
    assert len(run.candidates()) == 4 and not run.of_type(TrackerRecord)


def test_a_tracker_whose_logging_fails_warns_once_and_the_run_finishes(tmp_path: Path, scored_family, search_config,
                                                                     wandb, monkeypatch: pytest.MonkeyPatch,
                                                                     capsys) -> None:
    from evomerge.run import trackers

    def broken(self, values) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(trackers.WandbTracker, "log", broken)
    run = start_run(tmp_path, scored_family, search_config, [wandb_config(tmp_path)])
    search(run)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evomerge: warning")]
    assert warnings == ["evomerge: warning: tracker wandb is off for this session (OSError: disk full)"]
    assert len(run.candidates()) == 4 and run.sessions()[-1].stopped is None
