"""RunLog: the run folder, the single source of truth of a run, and the one place that writes it.

    populations/<name>/
      config.yaml     the resolved config (absolute paths), written once
      run.json        fingerprints of config and source models, evomerge version, DARE/DELLA draw scheme
      log.jsonl       append-only typed records (``records.py``): candidates in tell order, held-out
                      scores, baselines, exports, sessions, budget changes, accepted changes,
                      experiment trackers' run ids
      session.lock    held while a session (search, resume, export, report) writes the folder
      optuna.db       the optuna study, when the strategy is optuna (rebuilt from the log on resume)
      statistics/     per source, calibration statistics a baseline's or a candidate's method needs (RegMean's,
                      Fisher's), written by the worker that first merges it, under a fingerprint of model and data
                      (``materialize/statistics.py``); reused by every later session

Population, Pareto front and strategy state are derived from log.jsonl. Each record is one line
written with a single write and fsync. Reading never writes: a torn last line (a crash or a write in
progress) is ignored with a warning, and cut off only by the session holding the lock, before its
first append. run.json, config.yaml and every record are checked when the folder is opened (a damaged
file is one line naming it and the line); a file that is a link out of the folder is refused. No pickle anywhere.
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
from evomerge.config.search import SearchConfig, read_yaml_mapping
from evomerge.errors import EvomergeError
from evomerge.files import write_text_atomic
from evomerge.genome.space import GenomeSpace
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
from evomerge.sources.writer import check_outside

LOG, CONFIG, META, LOCK, STUDY = "log.jsonl", "config.yaml", "run.json", "session.lock", "optuna.db"
STATISTICS = "statistics"
R = TypeVar("R")
AnyRecord = TypeVar("AnyRecord", bound=Record)  # append returns the kind of record it was given


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
        self._whole: int | None = None  # bytes of log.jsonl before a torn last line, when it has one
        self._staged: list[Record] = []  # kept, not yet written: see ``stage``
        self._staged_meta: RunMeta | None = None

    # --- creation and opening -------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, config: SearchConfig, fingerprints: Mapping[str, str]) -> "RunLog":
        """A new run folder, built beside ``root`` and renamed into place (never half-made)."""
        root = Path(root)
        check_outside(root, config.inputs)
        if (root / LOG).exists() or (root / META).exists():
            raise EvomergeError(f"{root} already holds a run; continue it with 'evomerge resume {root}' or choose "
                                "another --run-dir")
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
        """The run in ``root``, read and checked without writing anything (readers need no lock)."""
        root = Path(root)
        if not (root / LOG).is_file() or not (root / META).is_file():
            raise EvomergeError(f"{root} is not a run folder (no {LOG} / {META}); start one with 'evomerge search "
                                "CONFIG'")
        run = cls(root, [])
        _ = run.meta  # run.json is checked now, not when a later step needs it
        run._read(warn=True)
        return run

    def _read(self, *, warn: bool) -> None:
        """(Re)read the records, each checked against the config; a torn last line is left for ``append`` to cut."""
        self.records, self._whole = _read_records(self._file(LOG), self.config(), warn=warn)

    def _file(self, name: str) -> Path:
        """A file of the run folder; one that is a link leading out of the folder is refused, never followed."""
        path = self.root / name
        if path.is_symlink() and path.resolve().parent != self.root.resolve():
            raise EvomergeError(f"{path} is a link to {path.resolve()}, outside the run folder; a run's files must be "
                                "in its folder: replace the link with a copy of the file")
        return path

    @contextlib.contextmanager
    def session(self) -> Iterator["RunLog"]:
        """Hold the folder's lock while writing: a second session on the same run is refused. The log is read
        again once the lock is held (what the previous holder appended, whether it left a torn line)."""
        with open(self._file(LOCK), "a+") as lock:
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
                self._read(warn=False)
                yield self
                self._write_staged()  # the session went well: what it staged is the run's now
            finally:
                self._staged, self._staged_meta = [], None  # a failed session writes nothing it staged
                fcntl.flock(lock, fcntl.LOCK_UN)

    @property
    def meta(self) -> RunMeta:
        return load(RunMeta, _read_json(self._file(META)), what=f"{self.root / META}")

    def config(self) -> SearchConfig:
        if self._config is None:
            path = self._file(CONFIG)
            self._config = load(SearchConfig, read_yaml_mapping(path, what="run config"), what=f"run config {path}")
        return self._config

    def inputs(self) -> list[tuple[str, Path]]:
        """What reading this run reads, labelled (outputs stay outside): its folder, the model and task folders."""
        return [("the run folder", self.root), *self.config().inputs]

    def space(self) -> GenomeSpace:
        """The config's genome space (read from the model folders), its statistics in this run's folder; every logged
        genome must fit it."""
        space = GenomeSpace.for_config(self.config(), self.statistics_dir)
        for i, r in enumerate(self.records):  # record i is line i + 1: the log is read and appended line by line
            if isinstance(r, CandidateRecord) and len(r.x) != space.dim:
                raise EvomergeError(f"{self.root / LOG} line {i + 1}: candidate {r.index} has {len(r.x)} genes but the "
                                    f"genome of {CONFIG} has {space.dim}; restore the log or the config from a backup")
        return space

    def check_unchanged(self, fingerprints: Mapping[str, str], *, force: bool) -> list[str]:
        """Refuse to resume over an edited config or changed source files, unless forced; returns the changes a
        forced resume records with ``accept`` once everything else is checked."""
        meta = self.meta
        changes = []
        config_sha = _sha(self._file(CONFIG).read_text())
        if config_sha != meta.config_sha256:
            changes.append(f"{CONFIG} was edited")
        for key, sha in fingerprints.items():
            if meta.sources.get(key) != sha:
                changes.append(f"source model {key} changed (fingerprint {meta.sources.get(key, 'none')[:12]} -> "
                               f"{sha[:12]})")
        if meta.draws != DRAW_SCHEME and any(get_method(m).random for m in self.config().genome.methods):
            changes.append(f"DARE/DELLA draws changed (scheme {meta.draws or 'unrecorded'} -> {DRAW_SCHEME}): the "
                           "logged candidates would not be reproduced")
        if changes and not force:
            raise EvomergeError(f"cannot resume {self.root}: {changes[0]}; resume with --force to accept and record "
                                "the change")
        return changes

    def accept(self, changes: list[str], fingerprints: Mapping[str, str]) -> None:
        """Stage forced changes (from ``check_unchanged``): the current config and sources become the run's with
        the session's first record (``stage``), so a resume whose replay then fails writes nothing."""
        if not changes:
            return
        self.stage(ChangeRecord(tuple(changes)))
        self._staged_meta = replace(self.meta, config_sha256=_sha(self._file(CONFIG).read_text()),
                                    sources=dict(fingerprints), draws=DRAW_SCHEME)
        self._config = None

    @property
    def statistics_dir(self) -> Path:
        """The folder of the sources' calibration statistics (``materialize/statistics.py``;
        made when first written)."""
        return self._file(STATISTICS).resolve()  # as recipes name it, however the folder was opened

    def study_storage(self) -> str:
        """A fresh SQLite URL for an optuna study in this folder (resume rebuilds the study from the log)."""
        for stale in (STUDY, f"{STUDY}-journal", f"{STUDY}-wal"):
            (self.root / stale).unlink(missing_ok=True)
        return f"sqlite:///{(self.root / STUDY).resolve()}"

    # --- records ----------------------------------------------------------------------------

    def stage(self, record: AnyRecord) -> AnyRecord:
        """Keep ``record`` (read back like any other at once) but write it only before the session's next
        ``append``, or when its ``session`` ends without an error; a session that fails first never writes it."""
        record = replace(record, time=record.time if record.time is not None else time.time())
        self.records.append(record)
        self._staged.append(record)
        return record

    def _write_staged(self) -> None:
        staged, meta, self._staged, self._staged_meta = self._staged, self._staged_meta, [], None
        for record in staged:
            self._write(record)
        if meta is not None:
            write_text_atomic(self.root / META, _json(dump(meta)))

    def append(self, record: AnyRecord) -> AnyRecord:
        """Stamp, write (one write + fsync) and keep ``record``, after what was staged; returns the stamped record."""
        record = replace(record, time=record.time if record.time is not None else time.time())
        self._write_staged()
        self._write(record)
        self.records.append(record)
        return record

    def _write(self, record: Record) -> None:
        line = (to_line(record) + "\n").encode()
        if self._whole is not None:  # a torn last line: cut off by the writer (the lock's holder), never by a reader
            os.truncate(self._file(LOG), self._whole)
            self._whole = None
        fd = os.open(self._file(LOG), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

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


def _read_records(path: Path, cfg: SearchConfig, *, warn: bool) -> tuple[list[Record], int | None]:
    """The log's records, each checked against the config, and the length of its whole lines when a torn last line
    follows them (else None). Reads only: the torn line stays in the file."""
    lines = path.read_bytes().split(b"\n")
    tail = lines.pop()  # bytes after the last newline: empty unless the last write was torn
    records: list[Record] = []
    genes: int | None = None  # the first candidate's gene count; every candidate has the same
    for i, line in enumerate(lines):
        where = f"{path} line {i + 1}"
        try:
            record = from_line(line, where=where)
        except ValueError:  # not JSON: a torn write, if it is the last line
            if i == len(lines) - 1 and not tail:
                tail = line  # a torn line that still got its newline? treat as the torn tail
                break
            raise EvomergeError(f"{where} is corrupt (not the last line, so not a torn write); restore the file from a "
                                "backup") from None
        if isinstance(record, CandidateRecord):
            genes = len(record.x) if genes is None else genes
            _check_candidate(record, sum(isinstance(r, CandidateRecord) for r in records), genes, len(cfg.objectives),
                             where)
        records.append(record)
    if not tail:
        return records, None
    if warn:
        print(f"evomerge: warning: ignoring a torn last line of {path} (a write interrupted or in progress; the run's "
              "next session cuts it off)", file=sys.stderr)
    return records, sum(len(line) + 1 for line in lines[: len(records)])


def _check_candidate(record: CandidateRecord, index: int, genes: int, objectives: int, where: str) -> None:
    """A candidate fits the run: the next index (the driver logs in ask order), a point of the unit box of the
    log's dimension, one value per objective."""
    problem = None
    if record.index != index:
        problem = f"comes where candidate {index} belongs (the driver logs candidates in order, each once)"
    elif len(record.x) != genes:
        problem = f"has {len(record.x)} genes where the log's first candidate has {genes}"
    elif not all(0.0 <= u <= 1.0 for u in record.x):
        problem = "has a gene outside [0, 1]"
    elif len(record.objectives) != objectives:
        problem = f"has {len(record.objectives)} objective values for the run's {objectives} objectives"
    if problem is not None:
        raise EvomergeError(f"{where}: candidate {record.index} {problem}; restore the file from a backup")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except ValueError as e:  # not JSON, or not UTF-8 text
        where = f" (line {e.lineno}: {e.msg})" if isinstance(e, json.JSONDecodeError) else ""
        raise EvomergeError(f"{path} is not valid JSON{where}; restore it from a backup") from None


def _json(data: object) -> str:
    return json.dumps(data, indent=2)




def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def evomerge_version() -> str:
    try:
        return version("evomerge")
    except PackageNotFoundError:
        return "unknown"
