"""Experiment trackers: a run reported to Weights & Biases or trackio while it goes.

Off unless ``execution.trackers`` names one; a library is imported only when configured. What each gets:

- from the driver, per candidate told in the session: ``candidate``, ``generation``, ``objective/<task>``
  (oriented: higher is better; left out when it failed), ``merge_s``, ``score_s``, ``failed``, ``cached``;
- from the driver, per generation that ends: ``generation``, ``gen/<task>/best``, ``gen/<task>/mean`` (a
  generation is reported by the session that told its last candidate; one cut by the budget at the end of the
  session, and again, whole, if a resume with a larger budget continues it);
- from the driver, at the end of a search session: ``front`` (a table: candidate, generation, objectives) and
  ``front_size``;
- from export: ``export/candidate``, ``export/<task>``, and the card and recipes as a ``model`` artifact (not the
  weights); from report: its plots as images (``report/<plot>``).

The driver is the one place of a search that sees told results, so workers never report. A tracker that fails
(its library missing, its init or a log call raising) prints one warning line and is off for the rest of the
session; the run goes on. Each tracker's run id is a ``TrackerRecord`` in the run log (written through RunLog), so
resume, export and report continue the same tracker run.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from evomerge import pareto
from evomerge.config.schema import dump
from evomerge.config.search import ObjectiveConfig, TrackerConfig
from evomerge.run.log import RunLog
from evomerge.run.records import CandidateRecord, TrackerRecord
from evomerge.run.status import generation_stats


class Tracker(Protocol):
    """One library's run, as ``Trackers`` uses it."""

    def start(self, run_id: str | None, config: Mapping[str, Any]) -> str:
        """Open the run ``run_id`` (None: a new one); returns the id that resumes it."""
        ...

    def log(self, values: Mapping[str, Any]) -> None: ...

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None: ...

    def images(self, paths: Mapping[str, Path]) -> None: ...

    def files(self, name: str, paths: Sequence[Path]) -> None:
        """Upload ``paths`` as one artifact of type ``model``."""
        ...

    def finish(self) -> None: ...


class _Library:
    """What wandb and trackio share: a run object with ``log``, and the same Table, Image and Artifact types."""

    def __init__(self, cfg: TrackerConfig, run_name: str, module: Any):
        self.cfg, self.run_name, self.lib = cfg, run_name, module
        self.run: Any = None

    def log(self, values: Mapping[str, Any]) -> None:
        self.run.log(dict(values))

    def table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.log({key: self.lib.Table(columns=list(columns), data=[list(row) for row in rows])})

    def images(self, paths: Mapping[str, Path]) -> None:
        self.log({key: self.lib.Image(str(path)) for key, path in paths.items()})

    def files(self, name: str, paths: Sequence[Path]) -> None:
        artifact = self.lib.Artifact(name, type="model")
        for path in paths:
            artifact.add_file(str(path))
        self._log_artifact(artifact)

    def _log_artifact(self, artifact: Any) -> None:
        self.run.log_artifact(artifact)

    def finish(self) -> None:
        self.run.finish()


class WandbTracker(_Library):
    """Weights & Biases: resumed by run id (``mode: offline`` keeps it on this machine for ``wandb sync``)."""

    def __init__(self, cfg: TrackerConfig, run_name: str):
        import wandb

        super().__init__(cfg, run_name, wandb)

    def start(self, run_id: str | None, config: Mapping[str, Any]) -> str:
        c = self.cfg
        if c.dir is not None:
            c.dir.mkdir(parents=True, exist_ok=True)
        self.run = self.lib.init(
            project=c.project, entity=c.entity, name=c.name or self.run_name, group=c.group, tags=list(c.tags) or None,
            mode=c.mode, dir=None if c.dir is None else str(c.dir), config=dict(config),
            id=run_id or secrets.token_hex(4), resume="allow",
        )
        return str(self.run.id)


class TrackioTracker(_Library):
    """trackio: local first (SQLite under TRACKIO_DIR); resumed by run name."""

    def __init__(self, cfg: TrackerConfig, run_name: str):
        import trackio

        super().__init__(cfg, run_name, trackio)

    def start(self, run_id: str | None, config: Mapping[str, Any]) -> str:
        name = run_id or self.cfg.name or f"{self.run_name}-{secrets.token_hex(3)}"
        self.run = self.lib.init(project=self.cfg.project, name=name, group=self.cfg.group, config=dict(config),
                                 resume="allow" if run_id else "never", embed=False)
        return str(self.run.name)

    def _log_artifact(self, artifact: Any) -> None:
        self.lib.log_artifact(artifact)  # trackio's artifacts go to its current run

    def finish(self) -> None:
        self.lib.finish()


ADAPTERS: dict[str, Callable[[TrackerConfig, str], Tracker]] = {"wandb": WandbTracker, "trackio": TrackioTracker}


class Trackers:
    """A session's live trackers: what the driver, export and report send; a failing tracker warns once and is off."""

    def __init__(self, run: RunLog, quiet: bool = False):
        self.run, self.objectives, self.quiet = run, run.config().objectives, quiet
        self.labels = objective_labels(self.objectives)
        self.live: dict[str, Tracker] = {}
        self.generation: list[tuple[CandidateRecord, bool]] = []  # the current generation's records, and told now?

    @classmethod
    def start(cls, run: RunLog, *, quiet: bool = False) -> Trackers:
        """Open (or continue) the run's configured trackers; the caller holds the run's session lock. ``quiet``: the
        libraries' own output (banners, summaries) is swallowed; evomerge's warnings are not."""
        self = cls(run, quiet)
        cfg = run.config()
        known = {r.library: r.run_id for r in run.of_type(TrackerRecord)}
        for tc in cfg.execution.trackers:
            try:
                tracker = ADAPTERS[tc.library](tc, cfg.name)
                with self._silenced():
                    run_id = tracker.start(known.get(tc.library), dump(cfg))
            except ImportError as e:  # the library itself missing, or a broken install of it
                missing = f"{tc.library} is not installed: pip install 'evomerge[track]'"
                _warn(tc.library, missing if e.name == tc.library else _text(e))
                continue
            except Exception as e:  # noqa: BLE001 - a tracker never stops a run
                _warn(tc.library, _text(e))
                continue
            if run_id != known.get(tc.library):
                run.append(TrackerRecord(tc.library, run_id))
            self.live[tc.library] = tracker
        return self

    def __enter__(self) -> Trackers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    # --- what the driver sends ------------------------------------------------------------------

    def told(self, record: CandidateRecord, new: bool) -> None:
        """A candidate told to the strategy (``new``: evaluated in this session, not replayed from the log)."""
        if self.generation and record.generation != self.generation[-1][0].generation:
            if self.generation[-1][1]:  # a generation is reported by the session that told its last candidate
                self._generation()
            self.generation = []
        self.generation.append((record, new))
        if new and self.live:
            values: dict[str, Any] = {"candidate": record.index, "generation": record.generation,
                                      "merge_s": record.merge_s, "score_s": record.score_s,
                                      "failed": int(not record.ok), "cached": int(record.cached_from is not None)}
            if record.ok:
                values.update({f"objective/{label}": v
                               for label, v in zip(self.labels, record.objectives, strict=True)})
            self._each(lambda t: t.log(values))

    def session_end(self, complete: bool) -> None:
        """The end of a search session: the last generation (when the budget is reached) and the front."""
        if complete and self.generation and self.generation[-1][1]:
            self._generation()
        front = pareto.front(self.run.evaluated(), lambda r: r.objectives)
        rows = [[r.index, r.generation, *r.objectives] for r in front]
        self._each(lambda t: t.table("front", ["candidate", "generation", *self.labels], rows))
        self._each(lambda t: t.log({"front_size": len(front)}))

    # --- what export and report send ------------------------------------------------------------

    def exported(self, record: CandidateRecord, files: Sequence[Path]) -> None:
        """An exported candidate: its objectives, and ``files`` (card, recipes; not the weights) as an artifact."""
        values: dict[str, Any] = {"export/candidate": record.index}
        values.update({f"export/{label}": v for label, v in zip(self.labels, record.objectives, strict=True)})
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.run.config().name}-candidate-{record.index}")
        self._each(lambda t: t.log(values))
        self._each(lambda t: t.files(name, files))

    def images(self, paths: Mapping[str, Path]) -> None:
        self._each(lambda t: t.images(paths))

    def finish(self) -> None:
        self._each(lambda t: t.finish())
        self.live = {}

    # --- internals ------------------------------------------------------------------------------

    def _generation(self) -> None:
        records = [r for r, _ in self.generation]
        stats = generation_stats(self.objectives, records)
        values: dict[str, Any] = {"generation": records[0].generation}
        for label, (best, mean) in zip(self.labels, stats, strict=False):  # stats: [] when every member failed
            values.update({f"gen/{label}/best": best, f"gen/{label}/mean": mean})
        self._each(lambda t: t.log(values))

    def _each(self, action: Callable[[Tracker], None]) -> None:
        for library, tracker in list(self.live.items()):
            try:
                with self._silenced():
                    action(tracker)
            except Exception as e:  # noqa: BLE001 - a tracker never stops a run
                _warn(library, _text(e))
                del self.live[library]
                with contextlib.suppress(Exception), self._silenced():  # let the library close what it opened
                    tracker.finish()

    @contextlib.contextmanager
    def _silenced(self) -> Iterator[None]:
        if not self.quiet:
            yield
            return
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield


def objective_labels(objectives: Sequence[ObjectiveConfig]) -> list[str]:
    """The objectives' names in tracker keys: their tasks, with the metric where a task is searched twice."""
    tasks = [o.task for o in objectives]
    return [f"{o.task}:{o.metric}" if tasks.count(o.task) > 1 else o.task for o in objectives]


def _text(error: Exception) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())[:300]  # one line, however long the library's message


def _warn(library: str, why: str) -> None:
    print(f"evomerge: warning: tracker {library} is off for this session ({why})", file=sys.stderr)
