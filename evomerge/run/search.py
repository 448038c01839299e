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
from dataclasses import dataclass, replace
from typing import Callable

from tqdm import tqdm

from evomerge.config.search import SearchConfig
from evomerge.errors import EvomergeError, RunStopped
from evomerge.execution.executor import Executor, Job
from evomerge.execution.worker import Outcome, WorkerSpec
from evomerge.genome.space import GenomeSpace
from evomerge.genome.starts import seed_points
from evomerge.materialize.memory import MemoryPlan, plan_for_config
from evomerge.run.log import RunLog
from evomerge.run.records import CandidateRecord, PlanRecord, SessionRecord
from evomerge.run.status import generation_stats
from evomerge.run.trackers import Trackers
from evomerge.scoring.objectives import WORST, nonfinite, oriented, per_item
from evomerge.strategies import Candidate, Evaluation, Strategy, make_strategy

ExecutorFactory = Callable[[WorkerSpec], Executor]


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
            weights = [o.weight for o in self.objectives]
            fitness = sum(w * v for w, v in zip(weights, record.objectives, strict=True)) / sum(weights)
            self.best = max(self.best, fitness)
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
    """One session of a run: replay the log, then evaluate until the budget is spent."""

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
        self.pending: deque[_Slot] = deque()
        self.ready: dict[int, CandidateRecord] = {}
        self.waiting: dict[str, list[_Slot]] = {}  # key of an in-flight job -> duplicates asked meanwhile
        self.next_index = self.told_now = 0
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
                if not self.pending:
                    break
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
        """Ask until L candidates are pending, the budget is reached, or the strategy waits for tells."""
        while len(self.pending) < self.cfg.execution.in_flight and self.next_index < budget and (
                self.next_index < len(self.logged) or time.time() < deadline):
            candidate = self.strategy.ask()
            if candidate is None:
                return
            slot = _Slot(self.next_index, candidate, self.space.key(candidate.x))
            self.next_index += 1
            self.pending.append(slot)
            if slot.index < len(self.logged):
                self.ready[slot.index] = self._replayed(slot)
            elif slot.key in self.first:
                self.ready[slot.index] = self._cached(slot, self.first[slot.key])
            elif slot.key in self.waiting:
                self.waiting[slot.key].append(slot)
            else:
                self._submit(slot)

    def _submit(self, slot: _Slot) -> None:
        if self.executor is None:
            self.executor = self.executor_factory(WorkerSpec.from_config(self.cfg, self._plan()))
        self.executor.submit(Job(slot.index, self.space.to_recipe(slot.candidate.x)))
        self.waiting[slot.key] = [slot]

    def _plan(self) -> MemoryPlan:
        """This session's memory plan: printed (unless quiet) and logged before the workers start."""
        plan = plan_for_config(self.cfg)
        self.run.append(PlanRecord(plan))
        if not self.quiet:
            tqdm.write("\n".join(plan.lines()))
        return plan

    def _tell_next(self, progress: Progress) -> CandidateRecord:
        """Wait for the oldest pending candidate's result, log it (if new) and tell it."""
        head = self.pending[0]
        while head.index not in self.ready:
            assert self.executor is not None
            result = self.executor.next_result()
            slots = self.waiting.pop(next(s.key for s in self.pending if s.index == result.job.index))
            record = self._evaluated(slots[0], result.outcome)
            self.ready[slots[0].index] = record
            for dup in slots[1:]:
                self.ready[dup.index] = self._cached(dup, record)
        self.pending.popleft()
        record = self.ready.pop(head.index)
        new = head.index >= len(self.logged)
        if new:
            record = self.run.append(record)
            self.told_now += 1
        self.strategy.tell(head.candidate, self._evaluation(record))
        progress.update(record, new)
        assert self.trackers is not None
        self.trackers.told(record, new)
        return record

    def _end_session(self, stopped: str | None) -> None:
        if self.executor is None:
            return
        restarts = getattr(self.executor, "restarted", 0)
        self.run.append(SessionRecord(self.cfg.execution.backend, self.executor.n_workers, self.told_now,
                                      self.executor.utilization(), restarts, stopped))
        self.executor.close()

    # --- records ------------------------------------------------------------------------------

    def _replayed(self, slot: _Slot) -> CandidateRecord:
        record = self.logged[slot.index]
        if record.key != slot.key:
            raise EvomergeError(
                f"replaying {self.run.root}: candidate {slot.index} differs from the log (strategy or config changed "
                "since the run was started); it cannot be resumed exactly"
            )
        if record.cached_from is None:
            self.first[slot.key] = record
        return record

    def _evaluated(self, slot: _Slot, outcome: Outcome) -> CandidateRecord:
        c = slot.candidate
        error = outcome.error if outcome.scores is None else nonfinite(self.cfg.objectives, outcome.scores)
        record = CandidateRecord(
            index=slot.index, key=slot.key, x=c.x, parents=c.parents, operator=c.operator, generation=c.generation,
            scores=outcome.scores, error=error,
            objectives=tuple(WORST for _ in self.cfg.objectives) if error else oriented(self.cfg.objectives, outcome.scores),
            merge_s=round(outcome.merge_s, 6), score_s=round(outcome.score_s, 6), worker=outcome.worker,
        )
        self.first[slot.key] = record
        return record

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
