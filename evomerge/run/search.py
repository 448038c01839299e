"""The driver: asks the strategy, runs candidates on an executor, tells results in ask order, logs them.

Determinism (DESIGN.md §5): candidate *i* is asked only once results 0 … i−L are told, and results
are told strictly in ask order (early finishers wait in a buffer), with L = ``execution.in_flight``
from the config. The sequence of asks and tells therefore depends only on result values — not on
the worker count or on which worker finished first — and so do the candidates and the log.

Resume is the same loop: the log's candidates are told from the log instead of being evaluated,
after checking that the strategy asked exactly the logged genome. A candidate that was in flight
when the run stopped is simply asked again and evaluated.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from tqdm import tqdm

from evomerge.errors import EvomergeError
from evomerge.execution.executor import Executor, Job
from evomerge.execution.worker import Outcome, WorkerSpec
from evomerge.genome.space import GenomeSpace
from evomerge.run.config import SearchConfig
from evomerge.run.log import RunLog
from evomerge.scoring.objectives import oriented, per_item
from evomerge.sources.layers import layer_groups, num_layers
from evomerge.sources.pool import read_config, read_tensor_names
from evomerge.strategies import Candidate, Evaluation, Strategy, make_strategy

def genome_space(cfg: SearchConfig) -> GenomeSpace:
    names = read_tensor_names(cfg.base)
    groups = layer_groups(names, num_layers(read_config(cfg.base), names), cfg.layer_granularity)
    return GenomeSpace(
        groups, base=cfg.base, sources=cfg.models, methods=cfg.methods, bounds=cfg.bounds,
        parameters=cfg.parameters, split_by_kind=cfg.split_by_kind, layer_granularity=cfg.layer_granularity,
        seed=cfg.seed, dtype=cfg.dtype,
    )


def worker_spec(cfg: SearchConfig) -> WorkerSpec:
    return WorkerSpec(
        base=cfg.base, sources=cfg.models,
        calibration_tasks=tuple(o.task for o in cfg.objectives),
        heldout_tasks=tuple(o.heldout_task or o.task for o in cfg.objectives),
        task_path=cfg.task_path, batch_size=cfg.batch_size, device=cfg.device, threads=cfg.threads, merge_cache=cfg.merge_cache,
        allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
    )


def seed_points(space: GenomeSpace) -> list[tuple[float, ...]]:
    """Where every search starts: all weights 1 (plain task arithmetic, the first point and CMA-ES's
    mean), then each source alone (the natural niches' seed models)."""
    k = len(space.sources)
    together = space.encode(weight=[1.0] * k, density=[1.0] * k)
    alone = [space.encode(weight=[1.0 if j == i else 0.0 for j in range(k)], density=[1.0] * k) for i in range(k)]
    return [together, *alone]


def make_run_strategy(cfg: SearchConfig, space: GenomeSpace, run: RunLog) -> Strategy:
    options = dict(cfg.strategy_options)
    if cfg.strategy == "optuna":
        options.setdefault("storage_path", str(run.root / "optuna.db"))
    return make_strategy(
        cfg.strategy, space.dim, len(cfg.objectives), seed=cfg.seed,
        weights=[o.weight for o in cfg.objectives], initial=seed_points(space), **options,
    )


@dataclass
class _Slot:
    index: int
    candidate: Candidate
    key: str


class Search:
    """One session of a run: replay the log, then evaluate until the budget is spent."""

    def __init__(self, run: RunLog, executor_factory: Callable[[WorkerSpec], Executor], *, quiet: bool = False):
        self.run, self.cfg = run, run.config()
        self.space = genome_space(self.cfg)
        self.strategy = make_run_strategy(self.cfg, self.space, run)
        self.executor_factory, self.quiet = executor_factory, quiet
        self.logged = run.candidates()
        self.first: dict[str, dict[str, Any]] = {}  # genome key -> its first evaluated record
        self.sizes: list[int] | None = None
        self.best = -math.inf
        self.failed = 0
        self.generation: list[dict[str, Any]] = []  # records of the generation being told

    def run_to_budget(self) -> int:
        """Evaluate up to the run's budget; returns the number of candidates told in this session."""
        budget, lag = self.run.max_evals(), self.cfg.in_flight
        deadline = time.time() + 60 * self.cfg.max_minutes if self.cfg.max_minutes else math.inf
        pending: deque[_Slot] = deque()
        ready: dict[int, dict[str, Any]] = {}
        waiting: dict[str, list[_Slot]] = {}  # key of an in-flight job -> duplicates asked meanwhile
        executor: Executor | None = None
        told_now, next_index = 0, 0
        bar = tqdm(total=budget, initial=min(len(self.logged), budget), disable=self.quiet, unit="cand", dynamic_ncols=True)
        try:
            while True:
                while len(pending) < lag and next_index < budget and (next_index < len(self.logged) or time.time() < deadline):
                    candidate = self.strategy.ask()
                    if candidate is None:
                        break
                    slot = _Slot(next_index, candidate, self.space.key(candidate.x))
                    next_index += 1
                    pending.append(slot)
                    if slot.index < len(self.logged):
                        ready[slot.index] = self._replayed(slot)
                    elif slot.key in self.first:
                        ready[slot.index] = self._cached(slot, self.first[slot.key])
                    elif slot.key in waiting:
                        waiting[slot.key].append(slot)
                    else:
                        if executor is None:
                            executor = self.executor_factory(worker_spec(self.cfg))
                        executor.submit(Job(slot.index, self.space.to_recipe(candidate.x)))
                        waiting[slot.key] = [slot]
                if not pending:
                    break
                head = pending[0]
                while head.index not in ready:
                    assert executor is not None
                    result = executor.next_result()
                    slots = waiting.pop(pending_key(pending, result.job.index))
                    record = self._evaluated(slots[0], result.outcome)
                    ready[slots[0].index] = record
                    for dup in slots[1:]:
                        ready[dup.index] = self._cached(dup, record)
                pending.popleft()
                record = ready.pop(head.index)
                if head.index >= len(self.logged):
                    self.run.append(record)
                    told_now += 1
                    bar.update(1)
                self.strategy.tell(head.candidate, self._evaluation(record))
                self._progress(bar, record)
        finally:
            bar.close()
            if executor is not None:
                self.run.append({"type": "session", "backend": self.cfg.backend, "workers": executor.n_workers,
                                 "told": told_now, "utilization": executor.utilization()})
                executor.close()
        return told_now

    # --- records ----------------------------------------------------------------------------

    def _replayed(self, slot: _Slot) -> dict[str, Any]:
        record = self.logged[slot.index]
        if record["key"] != slot.key:
            raise EvomergeError(
                f"replaying {self.run.root}: candidate {slot.index} differs from the log (strategy or config changed "
                "since the run was started); it cannot be resumed exactly"
            )
        if record.get("cached_from") is None:
            self.first[slot.key] = record
        return record

    def _base_record(self, slot: _Slot) -> dict[str, Any]:
        c = slot.candidate
        return {"type": "candidate", "index": slot.index, "key": slot.key, "x": list(c.x), "parents": list(c.parents),
                "operator": c.operator, "generation": c.generation}

    def _evaluated(self, slot: _Slot, outcome: Outcome) -> dict[str, Any]:
        record = {**self._base_record(slot), "scores": outcome.scores, "error": outcome.error,
                  "objectives": list(oriented(self.cfg.objectives, outcome.scores)), "cached_from": None,
                  "merge_s": round(outcome.merge_s, 6), "score_s": round(outcome.score_s, 6), "worker": outcome.worker}
        self.first[slot.key] = record
        return record

    def _cached(self, slot: _Slot, first: dict[str, Any]) -> dict[str, Any]:
        return {**self._base_record(slot), "scores": first["scores"], "error": first["error"], "objectives": first["objectives"],
                "cached_from": first["index"], "merge_s": 0.0, "score_s": 0.0, "worker": "cache"}

    def _evaluation(self, record: dict[str, Any]) -> Evaluation:
        scores = record["scores"]
        if scores is not None and self.sizes is None:
            self.sizes = [len(next(iter(scores[o.task]["per_item"].values()))) for o in self.cfg.objectives]
        items = per_item(self.cfg.objectives, scores, self.sizes or [0] * len(self.cfg.objectives))
        return Evaluation(objectives=tuple(record["objectives"]), per_item=items, failed=record["error"] is not None)

    def _progress(self, bar: tqdm, record: dict[str, Any]) -> None:
        """Best scalarized score on the bar; one line per finished generation with best/mean per objective."""
        if self.generation and record["generation"] != self.generation[-1]["generation"]:
            self._generation_line()
        self.generation.append(record)
        if record["error"] is not None:
            self.failed += 1
        else:
            weights = [o.weight for o in self.cfg.objectives]
            self.best = max(self.best, sum(w * v for w, v in zip(weights, record["objectives"])) / sum(weights))
        bar.set_postfix(best=f"{self.best:.4f}", failed=self.failed, refresh=False)

    def _generation_line(self) -> None:
        ok = [r for r in self.generation if r["error"] is None]
        if ok and not self.quiet:
            cols = []
            for j, o in enumerate(self.cfg.objectives):
                values = [r["objectives"][j] for r in ok]
                cols.append(f"{o.task} best {max(values):.3f} mean {sum(values) / len(values):.3f}")
            tqdm.write(f"gen {self.generation[0]['generation']:>3} ({len(self.generation)} cand): " + " | ".join(cols))
        self.generation = []


def pending_key(pending: deque[_Slot], index: int) -> str:
    for slot in pending:
        if slot.index == index:
            return slot.key
    raise RuntimeError(f"executor returned job {index}, which is not pending")
