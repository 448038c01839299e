"""The driver: asks the strategy, runs candidates on an executor, tells results in ask order, logs them.

Determinism: candidate *i* is asked only once results 0 … i−L are told, and results are told strictly
in ask order (early finishers wait in a buffer), with L = ``execution.in_flight`` from the config. The
sequence of asks and tells therefore depends only on result values — not on the worker count or on
which worker finished first — and so do the candidates and the log (docs/DESIGN.md, "Determinism").

Resume is the same loop: the log's candidates are told from the log instead of being evaluated,
after checking that the strategy asked exactly the logged genome. A candidate that was in flight
when the run stopped is simply asked again and evaluated.

Experiment trackers (``run.trackers``, when configured) hear from here: each candidate told in this session, each
generation's best and mean, the front at the end.

A broken setup does not spend the budget: when the first candidates all fail, or consecutive
failures share one cause, the run stops with that cause (``RunStopped``) and keeps its log.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from tqdm import tqdm

from evomerge.config.search import SearchConfig
from evomerge.errors import EvomergeError, RunStopped
from evomerge.execution.executor import Executor, Job
from evomerge.execution.worker import Outcome, WorkerSpec
from evomerge.genome.space import GenomeSpace
from evomerge.genome.starts import seed_points
from evomerge.materialize.memory import MemoryPlan, plan_for_config
from evomerge.run.log import RunLog
from evomerge.run.racing import Chunks, Items, ParetoRace, Verdict, race_items, verdicts
from evomerge.run.records import CandidateRecord, PlanRecord, SessionRecord
from evomerge.run.status import generation_stats
from evomerge.run.trackers import Trackers
from evomerge.scoring.objectives import (
    WORST,
    fitness,
    metric_name,
    nonfinite,
    oriented,
    per_item,
    score_of,
)
from evomerge.scoring.partial import combine
from evomerge.scoring.result import TaskScore, result_key
from evomerge.scoring.scorer import count_items
from evomerge.strategies import (
    Candidate,
    Evaluation,
    Selection,
    Strategy,
    make_strategy,
)

ExecutorFactory = Callable[[WorkerSpec], Executor]
Scores = Mapping[str, TaskScore]


def make_run_strategy(cfg: SearchConfig, space: GenomeSpace, run: RunLog) -> Strategy:
    """The config's strategy, started at the seed points; an optuna study lives in the run folder."""
    storage = run.study_storage() if cfg.strategy.name == "optuna" else None
    return make_strategy(
        cfg.strategy.name, space.dim, len(cfg.objectives), seed=cfg.seed,
        weights=[o.weight for o in cfg.objectives], initial=seed_points(space), storage=storage, **cfg.strategy.options,
    )


@dataclass
class _Slot:
    index: int
    candidate: Candidate
    key: str


@dataclass
class _Entry:
    """A candidate being scored: in one job on every item, or (raced) in chunks; its results so far."""

    slot: _Slot
    selection: Selection | None  # the generation it is raced in; None: one job on every item
    dups: list[_Slot] = field(default_factory=list)  # the same genome asked meanwhile: they get its record
    issued: int = 0  # jobs handed out
    parts: list[Scores] = field(default_factory=list)  # results of the jobs processed so far, in order
    processed: int = 0
    error: str | None = None
    verdict: Verdict | None = None
    merge_s: float = 0.0
    score_s: float = 0.0
    tokens: int = 0
    worker: str = ""

    def wants(self, chunks: int) -> bool:
        """Whether it needs another job: not failed, not resolved, items left."""
        return self.error is None and self.verdict is None and self.issued < (chunks if self.selection else 1)

    def finished(self, chunks: int) -> bool:
        return not self.wants(chunks) and self.processed == self.issued


@dataclass
class _Group:
    """A raced generation: its members being scored and, for a Pareto selection, the race against it."""

    members: list[_Entry] = field(default_factory=list)
    race: ParetoRace | None = None


class FailureWatch:
    """Stops a run whose candidates fail systematically: the first N all fail, or N in a row share one cause."""

    def __init__(self, limit: int):
        self.limit = limit
        self.seen = self.ok = 0
        self.streak: list[str] = []  # errors of the failures since the last success

    def see(self, record: CandidateRecord) -> str | None:
        """Why the run should stop after ``record``, or None."""
        self.seen += 1
        if record.ok:
            self.ok += 1
            self.streak = []
            return None
        assert record.error is not None
        self.streak.append(record.error)
        if self.ok == 0 and self.seen >= self.limit:
            return f"the first {self.seen} candidates all failed; the last with: {record.error}"
        if len(self.streak) >= self.limit and len(set(self.streak[-self.limit:])) == 1:
            return f"{self.limit} candidates in a row failed with the same cause: {record.error}"
        return None


class Progress:
    """The progress bar (best scalarized score, failures) and one line per finished generation."""

    def __init__(self, cfg: SearchConfig, total: int, initial: int, quiet: bool):
        self.objectives, self.quiet = cfg.objectives, quiet
        self.bar = tqdm(total=total, initial=initial, disable=quiet, unit="cand", dynamic_ncols=True)
        self.best, self.failed = -math.inf, 0
        self.generation: list[CandidateRecord] = []

    def update(self, record: CandidateRecord, new: bool) -> None:
        if new:
            self.bar.update(1)
        if self.generation and record.generation != self.generation[-1].generation:
            self._generation_line()
        self.generation.append(record)
        if not record.ok:
            self.failed += 1
        else:
            self.best = max(self.best, fitness(self.objectives, record.objectives))
        self.bar.set_postfix(best=f"{self.best:.4f}", failed=self.failed, refresh=False)

    def close(self) -> None:
        self.bar.close()

    def _generation_line(self) -> None:
        stats = generation_stats(self.objectives, self.generation)
        if stats and not self.quiet:
            cols = [f"{o.task} best {best:.3f} mean {mean:.3f}"
                    for o, (best, mean) in zip(self.objectives, stats, strict=True)]
            tqdm.write(f"gen {self.generation[0].generation:>3} ({len(self.generation)} cand): " + " | ".join(cols))
        self.generation = []


class Search:
    """One session of a run: replay the log, then evaluate until the budget is spent.

    The unit of work is a job: a candidate on every item, or (``scoring.fidelity: racing``) one chunk of a
    raced candidate's items. Jobs are numbered as the driver hands them out and their results are processed
    in that order (early finishers wait in a buffer), at most L = ``execution.in_flight`` jobs ahead; what
    is handed out next depends only on processed results, so the jobs, the racing decisions and the log are
    the same on any backend and worker count. On resume the logged candidates' jobs are answered from the
    log (a raced candidate's chunks are slices of its logged scores), so the resumed run makes the same
    decisions as the uninterrupted one.
    """

    def __init__(self, run: RunLog, executor_factory: ExecutorFactory, *, quiet: bool = False):
        self.run, self.cfg = run, run.config()
        self.space = run.space()
        self.strategy = make_run_strategy(self.cfg, self.space, run)
        self.executor_factory, self.quiet = executor_factory, quiet
        self.logged = run.candidates()
        self.first: dict[str, CandidateRecord] = {}  # genome key -> its first evaluated record
        self.sizes: list[int] | None = None  # per objective, its number of calibration items
        self.watch = FailureWatch(self.cfg.budget.stop_after_failures)
        self.executor: Executor | None = None
        self.pending: deque[_Slot] = deque()  # asked, not yet told, in ask order
        self.ready: dict[int, CandidateRecord] = {}
        self.entries: dict[str, _Entry] = {}  # genome key -> the candidate being scored
        self.groups: dict[int, _Group] = {}  # generation -> its raced members
        self.asked_in: dict[int, int] = {}  # generation -> members asked (raced, duplicates and cached)
        self.jobs: deque[tuple[int, _Entry]] = deque()  # handed out, not processed: (job number, entry)
        self.results: dict[int, Outcome] = {}  # finished early, waiting for their turn
        self.next_index = self.next_job = self.told_now = 0
        self.told_records: list[CandidateRecord] = []  # this session's new records, in ask order (after the log's)
        self.chunks: Chunks | None = None  # racing: the items of each chunk
        self.trackers: Trackers | None = None  # started by run_to_budget

    def run_to_budget(self) -> int:
        """Evaluate up to the run's budget; returns the number of candidates told in this session."""
        budget = self.run.max_evals()
        deadline = time.time() + 60 * self.cfg.budget.max_minutes if self.cfg.budget.max_minutes else math.inf
        progress = Progress(self.cfg, budget, min(len(self.logged), budget), self.quiet)
        self.trackers = Trackers.start(self.run, quiet=self.quiet)
        stopped = None
        try:
            while True:
                self._ask_while_room(budget, deadline)
                self._hand_out()
                if not self.pending:
                    break
                if self.pending[0].index not in self.ready:
                    self._process_next()
                    continue
                record = self._tell_next(progress)
                stopped = self.watch.see(record)
                if stopped is not None:
                    raise RunStopped(f"run {self.run.root} stopped: {stopped} (the log is kept; fix the setup, then "
                                     f"'evomerge resume {self.run.root}')")
        finally:
            progress.close()
            self.trackers.session_end(complete=len(self.run.candidates()) >= budget)
            self.trackers.finish()
            self._end_session(stopped)
        if self.watch.seen and not self.watch.ok:
            raise RunStopped(f"run {self.run.root}: every candidate failed; the last with: {self.watch.streak[-1]}")
        return self.told_now

    # --- the loop -----------------------------------------------------------------------------

    def _ask_while_room(self, budget: int, deadline: float) -> None:
        """Ask until L candidates are pending (and a raced generation is asked whole), the budget is reached,
        or the strategy waits for tells."""
        while (len(self.pending) < self.cfg.execution.in_flight or self._generation_open()) and (
                self.next_index < budget and (self.next_index < len(self.logged) or time.time() < deadline)):
            candidate = self.strategy.ask()
            if candidate is None:
                return
            slot = _Slot(self.next_index, candidate, self.space.key(candidate.x))
            if slot.index < len(self.logged) and self.logged[slot.index].key != slot.key:
                raise EvomergeError(
                    f"replaying {self.run.root}: candidate {slot.index} differs from the log (strategy or config "
                    "changed since the run was started); it cannot be resumed exactly"
                )
            self.next_index += 1
            self.pending.append(slot)
            selection = self.strategy.selection(candidate) if self.cfg.scoring.fidelity == "racing" else None
            group = None if selection is None else self._group(selection)
            if slot.key in self.first:
                self.ready[slot.index] = self._copy(slot, self.first[slot.key])
                if group is not None and group.race is not None:
                    group.race.fixed.append(self._race_items(self.first[slot.key]))
            elif slot.key in self.entries:
                self.entries[slot.key].dups.append(slot)
            else:
                entry = _Entry(slot, selection)
                self.entries[slot.key] = entry
                if group is not None:
                    group.members.append(entry)
            if selection is not None and group is not None and not group.members and (
                    self.asked_in[selection.generation] == selection.size):
                del self.groups[selection.generation]  # a generation of repeats only: nothing to race

    def _group(self, selection: Selection) -> _Group:
        """The raced generation of a candidate just asked (counted as asked); its Pareto race starts with the
        told candidates the generation competes with."""
        self.asked_in[selection.generation] = self.asked_in.get(selection.generation, 0) + 1
        group = self.groups.get(selection.generation)
        if group is None:
            group = self.groups[selection.generation] = _Group()
            if selection.rule == "pareto":
                pool = len(selection.rivals) + selection.size
                group.race = ParetoRace(selection.keep, pool, self.cfg.scoring.racing_z)
                group.race.fixed.extend(self._race_items(self._told(i)) for i in selection.rivals)
        return group

    def _told(self, index: int) -> CandidateRecord:
        """The record of a candidate already told."""
        return self.logged[index] if index < len(self.logged) else self.told_records[index - len(self.logged)]

    def _race_items(self, record: CandidateRecord) -> Items | None:
        """A told candidate's search-metric values on its items in chunk order (what a raced member's prefixes
        pair with); None when it failed."""
        if not record.ok or record.scores is None:
            return None
        scores = self._chunks().in_chunk_order(record.scores) if record.items is None else record.scores
        return race_items(self.cfg.objectives, scores)[1]

    def _generation_open(self) -> bool:
        """Whether the newest candidate is raced in a generation not yet asked whole (its cut needs them all)."""
        if not self.pending or self.cfg.scoring.fidelity != "racing":
            return False
        selection = self.strategy.selection(self.pending[-1].candidate)
        return selection is not None and self.asked_in.get(selection.generation, 0) < selection.size

    def _hand_out(self) -> None:
        """Hand out jobs up to L ahead: the entry with the fewest jobs, the oldest first (chunks of a
        generation's members interleave; a worker never waits for one candidate's items)."""
        while len(self.jobs) < self.cfg.execution.in_flight:
            wanting = [e for e in self.entries.values() if e.wants(self._jobs_of(e))]
            if not wanting:
                return
            entry = min(wanting, key=lambda e: (e.issued, e.slot.index))
            number, k = self.next_job, entry.issued
            self.next_job += 1
            entry.issued += 1
            self.jobs.append((number, entry))
            if entry.slot.index < len(self.logged):
                self.results[number] = self._from_log(entry, k)
            else:
                self._submit(number, entry, k)

    def _jobs_of(self, entry: _Entry) -> int:
        """How many jobs score every item of this entry: its chunks when raced, else one."""
        return self._chunks().count if entry.selection is not None else 1

    def _submit(self, number: int, entry: _Entry, k: int) -> None:
        if self.executor is None:
            self.executor = self.executor_factory(WorkerSpec.from_config(self.cfg, self._plan()))
        items = self._chunks().items(k) if entry.selection is not None else None
        self.executor.submit(Job(number, self.space.to_recipe(entry.slot.candidate.x), items=items))

    def _from_log(self, entry: _Entry, k: int) -> Outcome:
        """A logged candidate's job result, read back from its record (a chunk: the slice of its scores)."""
        record = self.logged[entry.slot.index]
        if entry.selection is None:
            return Outcome(record.scores, error=record.error)
        part = None if record.scores is None else self._chunks().slice(record.scores, k)
        return Outcome(part, error=None if part is not None else record.error or "chunk missing from the log")

    def _chunks(self) -> Chunks:
        if self.chunks is None:
            tasks = list(dict.fromkeys(o.task_for("calibration") for o in self.cfg.objectives))
            self.chunks = Chunks.plan(count_items(tasks, self.cfg.scoring.task_path), self.cfg.scoring.chunk_items,
                                      self.cfg.seed)
        return self.chunks

    def _plan(self) -> MemoryPlan:
        """This session's memory plan: printed (unless quiet) and logged before the workers start."""
        plan = plan_for_config(self.cfg)
        self.run.append(PlanRecord(plan))
        if not self.quiet:
            tqdm.write("\n".join(plan.lines()))
        return plan

    def _process_next(self) -> None:
        """Process the oldest handed-out job's result (waiting for it if need be): its candidate's scores
        grow, its generation's racing decisions are made, a finished candidate gets its record."""
        number, entry = self.jobs.popleft()
        while number not in self.results:
            assert self.executor is not None
            result = self.executor.next_result()
            self.results[result.job.index] = result.outcome
        outcome = self.results.pop(number).checked(f"candidate {entry.slot.index}")
        entry.processed += 1
        entry.merge_s += outcome.merge_s
        entry.score_s += outcome.score_s
        entry.tokens += outcome.tokens
        entry.worker = entry.worker or outcome.worker
        if entry.error is None:
            error = outcome.error if outcome.scores is None else self._nonfinite(entry, outcome.scores)
            if outcome.scores is not None:
                entry.parts.append(outcome.scores)
            entry.error = error
        members = [entry]
        if entry.selection is not None:
            self._decide(entry.selection)
            members = list(self.groups[entry.selection.generation].members)  # a decision may finish any of them
        for member in members:
            if self.entries.get(member.slot.key) is member and member.finished(self._jobs_of(member)):
                self._finish(member)

    def _nonfinite(self, entry: _Entry, scores: Scores) -> str | None:
        if entry.selection is not None:
            for o in self.cfg.objectives:
                score = score_of(o, scores, "calibration")
                metric = metric_name(o, score, search=True)
                if result_key(metric, o.filter or score.filter) not in score.per_item:
                    raise EvomergeError(f"objective {o.task}: its search metric '{metric}' is "
                                        "not a mean over items, which scoring.fidelity racing needs (acc, exact_match, "
                                        "perplexity, ...); choose another metric or scoring.fidelity: full")
        return nonfinite(self.cfg.objectives, scores)

    def _decide(self, selection: Selection) -> None:
        """Racing: once the generation is asked whole and each member has a result, resolve the members
        confidently above or below its cut."""
        group = self.groups[selection.generation]
        members = group.members
        if self.asked_in[selection.generation] < selection.size or any(m.processed == 0 for m in members):
            return
        items = [None if m.error is not None else race_items(self.cfg.objectives, combine(m.parts))[1] for m in members]
        ok = next((m for m in members if m.error is None), None)
        if ok is None:
            return
        specs = race_items(self.cfg.objectives, combine(ok.parts))[0]
        if group.race is not None:
            decided = group.race.verdicts(items, specs)
        else:
            decided = verdicts(items, min(selection.keep, len(members)), specs, self.cfg.scoring.racing_z)
        for member, verdict in zip(members, decided, strict=True):
            if member.verdict is None and member.error is None:
                member.verdict = verdict

    def _finish(self, entry: _Entry) -> None:
        """A candidate with every job processed: its record (the logged one when replaying),
        for it and its duplicates."""
        slot = entry.slot
        del self.entries[slot.key]
        record = self.logged[slot.index] if slot.index < len(self.logged) else self._evaluated(entry)
        if record.cached_from is None:
            self.first[slot.key] = record
        self.ready[slot.index] = record
        for dup in entry.dups:
            self.ready[dup.index] = self._copy(dup, record)
        generation = entry.selection.generation if entry.selection is not None else None
        members = self.groups[generation].members if generation is not None else []
        if generation is not None and all(self.entries.get(m.slot.key) is not m for m in members):
            del self.groups[generation]  # every member finished: no decision left to make

    def _copy(self, slot: _Slot, first: CandidateRecord) -> CandidateRecord:
        """A repeated genome's record: the logged one when replaying, else a copy of its first evaluation."""
        return self.logged[slot.index] if slot.index < len(self.logged) else self._cached(slot, first)

    def _tell_next(self, progress: Progress) -> CandidateRecord:
        """Log the oldest pending candidate's record (if new) and tell it."""
        head = self.pending.popleft()
        record = self.ready.pop(head.index)
        new = head.index >= len(self.logged)
        if new:
            record = self.run.append(record)
            self.told_records.append(record)
            self.told_now += 1
        self.strategy.tell(head.candidate, self._evaluation(record))
        progress.update(record, new)
        assert self.trackers is not None
        self.trackers.told(record, new)
        return record

    def _end_session(self, stopped: str | None) -> None:
        if self.executor is None:
            return
        self.run.append(SessionRecord(self.cfg.execution.backend, self.executor.n_workers, self.told_now,
                                      self.executor.utilization(), self.executor.restarted, stopped))
        self.executor.close()

    # --- records ------------------------------------------------------------------------------

    def _evaluated(self, entry: _Entry) -> CandidateRecord:
        c, raced = entry.slot.candidate, entry.selection is not None
        scores = (combine(entry.parts) if raced else entry.parts[0]) if entry.parts else None
        error = entry.error
        return CandidateRecord(
            index=entry.slot.index, key=entry.slot.key, x=c.x, parents=c.parents, operator=c.operator,
            generation=c.generation, scores=scores, error=error,
            objectives=tuple(WORST for _ in self.cfg.objectives) if error else oriented(self.cfg.objectives, scores),
            merge_s=round(entry.merge_s, 6), score_s=round(entry.score_s, 6), worker=entry.worker,
            chunks=entry.processed if raced else None,
            items=self._chunks().n_items(len(entry.parts)) if raced else None, tokens=entry.tokens,
        )

    def _cached(self, slot: _Slot, first: CandidateRecord) -> CandidateRecord:
        c = slot.candidate
        return replace(first, index=slot.index, x=c.x, parents=c.parents, operator=c.operator, generation=c.generation,
                       cached_from=first.index, merge_s=0.0, score_s=0.0, worker="cache", time=None)

    def _evaluation(self, record: CandidateRecord) -> Evaluation:
        items: tuple[float, ...] = ()
        if self.strategy.needs_items:
            scores = record.scores if record.ok else None
            if scores is not None and self.sizes is None:
                self.sizes = [len(per_item([o], scores, [0])) for o in self.cfg.objectives]
            items = per_item(self.cfg.objectives, scores, self.sizes or [0] * len(self.cfg.objectives))
        return Evaluation(objectives=record.objectives, per_item=items, failed=not record.ok)
