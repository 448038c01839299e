"""RunLog: the run folder, the single source of truth of a run, and the one place that writes it.

    populations/<name>/
      config.yaml     the resolved config (absolute paths), written once
      run.json        fingerprints of config and source models, evomerge version, DARE/DELLA draw scheme
      log.jsonl       append-only typed records (``records.py``): candidates in tell order, held-out
                      scores, baselines, exports, sessions, budget changes, accepted changes,
                      experiment trackers' run ids
      session.lock    held while a session (search, resume, export, report) writes the folder
      optuna.db       the optuna study, when the strategy is optuna (rebuilt from the log on resume)

Population, Pareto front and strategy state are derived from log.jsonl. Each record is one line
written with a single write and fsync; a torn last line (a crash mid-write) is dropped with a
warning when the log is opened. No pickle anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Iterator, Mapping, TypeVar

from evomerge.config.schema import dump, load
from evomerge.config.search import SearchConfig, config_from_yaml
from evomerge.errors import EvomergeError
from evomerge.merge.draws import SCHEME as DRAW_SCHEME
from evomerge.merge.registry import get_method
from evomerge.run.records import (
    BaselineRecord,
    BudgetRecord,
    CandidateRecord,
    ChangeRecord,
    ExportRecord,
    HeldoutRecord,
    PlanRecord,
    Record,
    SessionRecord,
    from_line,
    to_line,
)

LOG, CONFIG, META, LOCK, STUDY = "log.jsonl", "config.yaml", "run.json", "session.lock", "optuna.db"
R = TypeVar("R")


@dataclass(frozen=True)
class RunMeta:
    config_sha256: str
    sources: Mapping[str, str]  # model folder -> SHA-256 of its weight files
    created: float
    evomerge: str
    draws: str = ""  # the DARE/DELLA draw scheme (merge.draws.SCHEME); "" in folders made before it was recorded


class RunLog:
    def __init__(self, root: Path, records: list[Record]):
        self.root = root
        self.records = records
        self._config: SearchConfig | None = None

    # --- creation and opening -------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, config: SearchConfig, fingerprints: Mapping[str, str]) -> "RunLog":
        """A new run folder, built beside ``root`` and renamed into place (never half-made)."""
        root = Path(root)
        if (root / LOG).exists() or (root / META).exists():
            raise EvomergeError(f"{root} already holds a run; continue it with 'evomerge resume {root}' or choose another --run-dir")
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise EvomergeError(f"run folder {root} is not empty; choose another --run-dir")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            text = config.to_yaml()
            (tmp / CONFIG).write_text(text)
            meta = RunMeta(_sha(text), dict(fingerprints), time.time(), evomerge_version(), DRAW_SCHEME)
            (tmp / META).write_text(_json(dump(meta)))
            (tmp / LOG).touch()
            if root.exists():
                root.rmdir()
            tmp.rename(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(root, [])

    @classmethod
    def open(cls, root: Path) -> "RunLog":
        root = Path(root)
        if not (root / LOG).is_file() or not (root / META).is_file():
            raise EvomergeError(f"{root} is not a run folder (no {LOG} / {META}); start one with 'evomerge search CONFIG'")
        return cls(root, _read_records(root / LOG))

    @contextlib.contextmanager
    def session(self) -> Iterator["RunLog"]:
        """Hold the folder's lock while writing: a second session on the same run is refused."""
        with open(self.root / LOCK, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.seek(0)
                holder = lock.read().strip() or "another process"
                raise EvomergeError(
                    f"{self.root} is in use by another evomerge session ({holder}); wait for it to end or stop it first"
                ) from None
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()}")
            lock.flush()
            try:
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def meta(self) -> RunMeta:
        return load(RunMeta, _read_json(self.root / META), what=f"{self.root / META}")

    def config(self) -> SearchConfig:
        if self._config is None:
            self._config = config_from_yaml((self.root / CONFIG).read_text())
        return self._config

    def check_unchanged(self, fingerprints: Mapping[str, str], *, force: bool) -> None:
        """Refuse to resume over an edited config or changed source files, unless forced (then record it)."""
        meta = self.meta
        changes = []
        config_sha = _sha((self.root / CONFIG).read_text())
        if config_sha != meta.config_sha256:
            changes.append(f"{CONFIG} was edited")
        for key, sha in fingerprints.items():
            if meta.sources.get(key) != sha:
                changes.append(f"source model {key} changed (fingerprint {meta.sources.get(key, 'none')[:12]} -> {sha[:12]})")
        if meta.draws != DRAW_SCHEME and any(get_method(m).random for m in self.config().genome.methods):
            changes.append(f"DARE/DELLA draws changed (scheme {meta.draws or 'unrecorded'} -> {DRAW_SCHEME}): the logged "
                           "candidates would not be reproduced")
        if not changes:
            return
        if not force:
            raise EvomergeError(f"cannot resume {self.root}: {changes[0]}; resume with --force to accept and record the change")
        self.append(ChangeRecord(tuple(changes)))
        _atomic_write(self.root / META, _json(dump(replace(meta, config_sha256=config_sha, sources=dict(fingerprints), draws=DRAW_SCHEME))))
        self._config = None

    def study_storage(self) -> str:
        """A fresh SQLite URL for an optuna study in this folder (resume rebuilds the study from the log)."""
        for stale in (STUDY, f"{STUDY}-journal", f"{STUDY}-wal"):
            (self.root / stale).unlink(missing_ok=True)
        return f"sqlite:///{(self.root / STUDY).resolve()}"

    # --- records ----------------------------------------------------------------------------

    def append(self, record: Record) -> Record:
        """Stamp, write (one write + fsync) and keep ``record``; returns the stamped record."""
        record = replace(record, time=record.time if record.time is not None else time.time())
        line = (to_line(record) + "\n").encode()
        fd = os.open(self.root / LOG, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)
        return record

    def of_type(self, kind: type[R]) -> list[R]:
        return [r for r in self.records if isinstance(r, kind)]

    def candidates(self) -> list[CandidateRecord]:
        return self.of_type(CandidateRecord)

    def evaluated(self) -> list[CandidateRecord]:
        """Successful candidates, each genome once (its first evaluation): the population."""
        return [r for r in self.candidates() if r.ok and r.cached_from is None]

    def heldout(self) -> dict[str, HeldoutRecord]:
        return {r.key: r for r in self.of_type(HeldoutRecord)}

    def baselines(self) -> list[BaselineRecord]:
        return self.of_type(BaselineRecord)

    def exports(self) -> list[ExportRecord]:
        return self.of_type(ExportRecord)

    def sessions(self) -> list[SessionRecord]:
        return self.of_type(SessionRecord)

    def plans(self) -> list[PlanRecord]:
        return self.of_type(PlanRecord)

    def max_evals(self) -> int:
        """The run's total budget: the config's, or the last budget change."""
        budget = self.config().budget.max_evals
        for r in self.of_type(BudgetRecord):
            budget = r.max_evals
        return budget


def _read_records(path: Path) -> list[Record]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # bytes after the last newline: empty unless the last write was torn
    records: list[Record] = []
    for i, line in enumerate(lines):
        try:
            records.append(from_line(line, where=f"{path} line {i + 1}"))
        except ValueError:  # not JSON: a torn write, if it is the last line
            if i == len(lines) - 1 and not tail:
                tail = line  # a torn line that still got its newline? treat as the torn tail
                break
            raise EvomergeError(f"{path} line {i + 1} is corrupt (not the last line, so not a torn write); restore the file from a backup") from None
    if tail:
        print(f"evomerge: warning: dropped a torn last record of {path} (interrupted mid-write)", file=sys.stderr)
        good = b"".join(line + b"\n" for line in lines[: len(records)])
        with open(path, "r+b") as f:
            f.truncate(len(good))
    return records


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _json(data: object) -> str:
    return json.dumps(data, indent=2)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def evomerge_version() -> str:
    try:
        return version("evomerge")
    except PackageNotFoundError:
        return "unknown"
