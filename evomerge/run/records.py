"""The record types of a run log: one frozen dataclass per kind, each with an exact JSON round trip.

A log line is ``{"type": <kind>, **fields}``; ``to_line`` and ``from_line`` are the only encoder and
decoder (through the schema module, so a damaged or hand-edited line is a one-line error naming the
field). ``time`` is stamped by ``RunLog.append``.

| kind        | written by                    | says                                                      |
|-------------|-------------------------------|-----------------------------------------------------------|
| candidate   | the driver, in tell order     | a genome, its scores (or error), oriented objectives      |
| heldout     | finalists                     | a genome's scores on the held-out tasks                   |
| baseline    | baselines                     | a fixed recipe's scores on one split (raced: its chunks)  |
| export      | export                        | which candidate went to which folder                      |
| session     | the driver, at the end        | backend, workers, utilization, why the session stopped    |
| budget      | ``evomerge resume --max-evals`` | the run's new total budget                              |
| change      | ``evomerge resume --force``   | accepted changes of config or sources                     |
| plan        | the driver, at session start  | the memory plan its workers follow (bytes, what is cached)|
| tracker     | ``run.trackers``, at its start | an experiment tracker's run id, so later sessions continue it |
| completed   | finalists                     | a raced candidate's scores on every calibration item      |
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Union

from evomerge.config.schema import dump, load
from evomerge.errors import EvomergeError
from evomerge.materialize.memory import MemoryPlan
from evomerge.scoring.result import TaskScore

Scores = Mapping[str, TaskScore]  # task name -> its scores


@dataclass(frozen=True)
class CandidateRecord:
    index: int  # position in ask order
    key: str  # content hash of the decoded genome (the evaluation cache key)
    x: tuple[float, ...]  # the point in the unit box
    parents: tuple[int, ...]
    operator: str = field(metadata={"empty": True})
    generation: int
    scores: Scores | None  # calibration tasks; None when the candidate failed
    error: str | None
    objectives: tuple[float, ...]  # oriented (higher is better); the worst value when failed
    cached_from: int | None = None  # index of the first evaluation of the same genome
    merge_s: float = 0.0
    score_s: float = 0.0
    worker: str = field(default="", metadata={"empty": True})
    # scoring.fidelity racing: the chunks of items scored (scores then hold only those items, in chunk order)
    # and the calibration items they hold, all tasks; None: scored on every item in one job
    chunks: int | None = None
    items: int | None = None
    tokens: int | None = None  # tokens of the requests scored (all jobs); None: logged before tokens were counted
    time: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class HeldoutRecord:
    key: str
    index: int
    scores: Scores | None
    error: str | None
    tokens: int | None = None
    time: float | None = None


@dataclass(frozen=True)
class CompletedRecord:
    key: str
    index: int
    scores: Scores | None  # calibration tasks, every item
    error: str | None
    tokens: int | None = None
    time: float | None = None


@dataclass(frozen=True)
class BaselineRecord:
    name: str
    split: Literal["calibration", "heldout"]
    recipe: Mapping[str, Any]  # the recipe's YAML form: the cache key together with name and split
    scores: Scores | None
    error: str | None
    # a grid member raced on calibration (export/baselines.py): the chunks scored (scores then hold only those
    # items, in chunk order) and the items they hold; None: every item, in one job or in every chunk
    chunks: int | None = None
    items: int | None = None
    tokens: int | None = None
    time: float | None = None


@dataclass(frozen=True)
class ExportRecord:
    index: int
    key: str
    pick: str
    finalists: int
    out: str
    time: float | None = None


@dataclass(frozen=True)
class SessionRecord:
    backend: str
    workers: int
    told: int
    utilization: Mapping[str, float]
    restarts: int = 0  # worker deaths seen (Ray)
    stopped: str | None = None  # why the session ended early; None when it reached its budget
    time: float | None = None


@dataclass(frozen=True)
class BudgetRecord:
    max_evals: int
    time: float | None = None


@dataclass(frozen=True)
class ChangeRecord:
    changes: tuple[str, ...]
    time: float | None = None


@dataclass(frozen=True)
class PlanRecord:
    plan: MemoryPlan
    time: float | None = None


@dataclass(frozen=True)
class TrackerRecord:
    library: str  # wandb, trackio
    run_id: str  # what the library resumes a run by (wandb: its id; trackio: its name)
    time: float | None = None


Record = Union[CandidateRecord, HeldoutRecord, BaselineRecord, ExportRecord, SessionRecord, BudgetRecord, ChangeRecord,
               PlanRecord, TrackerRecord, CompletedRecord]
KINDS: dict[str, type] = {
    "candidate": CandidateRecord, "heldout": HeldoutRecord, "baseline": BaselineRecord, "export": ExportRecord,
    "session": SessionRecord, "budget": BudgetRecord, "change": ChangeRecord, "plan": PlanRecord,
    "tracker": TrackerRecord, "completed": CompletedRecord,
}
_KIND_OF = {cls: kind for kind, cls in KINDS.items()}


def to_line(record: Record) -> str:
    """One strict-JSON line (non-finite numbers as strings), no newline."""
    return json.dumps({"type": _KIND_OF[type(record)], **dump(record)}, allow_nan=False)


def from_line(line: str | bytes, where: str = "log record") -> Record:
    data = json.loads(line)
    if not isinstance(data, dict) or data.get("type") not in KINDS:
        raise EvomergeError(f"{where} has no known 'type' (one of {', '.join(KINDS)})")
    kind = data.pop("type")
    return load(KINDS[kind], data, what=where)
