"""RunLog: the run folder, the single source of truth of a run, and the one place that writes it.

    populations/<name>/
      config.yaml     the resolved config (absolute paths), written once
      run.json        fingerprints of config and source models, evomerge version
      log.jsonl       append-only records: candidates in tell order, held-out scores, baselines,
                      sessions (utilization), budget changes, forced changes

Population, Pareto front and strategy state are derived from log.jsonl. Each record is one line
written with a single write and fsync; a torn last line (a crash mid-write) is dropped with a
warning when the log is opened. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import yaml

from evomerge.errors import EvomergeError
from evomerge.run.config import SearchConfig

LOG, CONFIG, META = "log.jsonl", "config.yaml", "run.json"


class RunLog:
    def __init__(self, root: Path, records: list[dict[str, Any]]):
        self.root = root
        self.records = records

    # --- creation and opening -------------------------------------------------------------

    @classmethod
    def create(cls, root: Path, config: SearchConfig, fingerprints: dict[str, str]) -> "RunLog":
        root = Path(root)
        if (root / LOG).exists() or (root / META).exists():
            raise EvomergeError(f"{root} already holds a run; continue it with 'evomerge resume {root}' or choose another --run-dir")
        if root.exists() and any(root.iterdir()):
            raise EvomergeError(f"run folder {root} is not empty; choose another --run-dir")
        root.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(config.to_dict(), sort_keys=False)
        _atomic_write(root / CONFIG, text)
        meta = {"config_sha256": _sha(text), "sources": fingerprints, "created": time.time(), "evomerge": _version()}
        _atomic_write(root / META, json.dumps(meta, indent=2))
        (root / LOG).touch()
        return cls(root, [])

    @classmethod
    def open(cls, root: Path) -> "RunLog":
        root = Path(root)
        if not (root / LOG).is_file() or not (root / META).is_file():
            raise EvomergeError(f"{root} is not a run folder (no {LOG} / {META}); start one with 'evomerge search CONFIG'")
        return cls(root, _read_records(root / LOG))

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads((self.root / META).read_text())

    def config(self) -> SearchConfig:
        return SearchConfig.from_dict(yaml.safe_load((self.root / CONFIG).read_text()))

    def check_unchanged(self, fingerprints: dict[str, str], *, force: bool) -> None:
        """Refuse to resume over an edited config or changed source files, unless forced (then record it)."""
        meta = self.meta
        changes = []
        config_sha = _sha((self.root / CONFIG).read_text())
        if config_sha != meta["config_sha256"]:
            changes.append(f"{CONFIG} was edited")
        for key, sha in fingerprints.items():
            if meta["sources"].get(key) != sha:
                changes.append(f"source model {key} changed (fingerprint {meta['sources'].get(key, 'none')[:12]} -> {sha[:12]})")
        if not changes:
            return
        if not force:
            raise EvomergeError(f"cannot resume {self.root}: {changes[0]}; resume with --force to accept and record the change")
        self.append({"type": "change", "changes": changes})
        meta.update(config_sha256=config_sha, sources=fingerprints)
        _atomic_write(self.root / META, json.dumps(meta, indent=2))

    # --- records ----------------------------------------------------------------------------

    def append(self, record: dict[str, Any]) -> None:
        record = {**record, "time": record.get("time", time.time())}
        line = (json.dumps(record, allow_nan=False) + "\n").encode()
        fd = os.open(self.root / LOG, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.records.append(record)

    def of_type(self, kind: str) -> Iterator[dict[str, Any]]:
        return (r for r in self.records if r["type"] == kind)

    def candidates(self) -> list[dict[str, Any]]:
        return list(self.of_type("candidate"))

    def max_evals(self) -> int:
        """The run's total budget: the config's, or the last budget change."""
        budget = self.config().max_evals
        for r in self.of_type("budget"):
            budget = r["max_evals"]
        return budget


def _read_records(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # bytes after the last newline: empty unless the last write was torn
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
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


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evomerge")
    except PackageNotFoundError:
        return "unknown"
