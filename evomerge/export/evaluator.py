"""Scoring outside the search loop (baselines, finalists): the run's own workers, started on first use.

Baselines and finalists are scored by the same Worker code, with the same sources, tasks and
batch size as the search — so their scores sit on one scale with the candidates'. The workers are
the run's executor (``execution.backend``, ``execution.workers``): requests that do not depend on each
other are handed over together (``Evaluate.many``), so every worker has one; their outcomes come back in
request order, and callers log them in that order, so the log does not depend on the worker count. The
workers are only started when something is missing from the log: an export whose scores are all cached
loads no model. Before they start, the source files are checked against the fingerprints the run recorded,
so nothing scored on changed models ever enters the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

from tqdm import tqdm

from evomerge.errors import EvomergeError
from evomerge.execution import make_executor
from evomerge.execution.executor import Executor, Job
from evomerge.execution.worker import Outcome, WorkerSpec
from evomerge.recipes.recipe import Recipe
from evomerge.run.log import RunLog
from evomerge.sources.pool import fingerprint

ExecutorFactory = Callable[[WorkerSpec], Executor]
Items = Mapping[str, tuple[int, ...]]  # a chunk: task -> document positions


@dataclass(frozen=True)
class Request:
    recipe: Recipe
    split: str
    what: str  # for progress and errors: "baseline soup", "candidate 12"
    items: Items | None = None  # None: every item


class Evaluate(Protocol):
    def many(self, requests: Sequence[Request]) -> list[Outcome]:
        """Independent requests, scored side by side where there are several workers; outcomes in request order."""


class Evaluator:
    def __init__(self, run: RunLog, executor_factory: ExecutorFactory | None = None, *, quiet: bool = False):
        self.run, self.cfg, self.quiet = run, run.config(), quiet
        self.factory: ExecutorFactory = executor_factory or (lambda spec: make_executor(self.cfg, spec, run.root))
        self.executor: Executor | None = None
        self.evaluated = 0  # evaluations run by this evaluator (0 when everything came from the log)
        self.bar: tqdm | None = None  # one progress bar for every model scored, not a line each

    def many(self, requests: Sequence[Request]) -> list[Outcome]:
        """Every request submitted at once, outcomes in request order; a machine failure among them raises (after
        all have finished, so that no worker is left busy), and nothing of the batch is returned."""
        if not requests:
            return []
        if self.bar is None:
            self.bar = tqdm(desc="evomerge: scoring", unit="job", disable=self.quiet, dynamic_ncols=True)
        if self.executor is None:
            check_sources(self.run)
            self.bar.set_postfix_str("starting the workers (loading the models)", refresh=True)
            self.executor = self.factory(WorkerSpec.from_config(self.cfg))
        self.bar.set_postfix_str(f"{len(requests)} job(s) handed over, first: {requests[0].what}", refresh=True)
        position = {}
        for k, r in enumerate(requests):
            self.evaluated += 1
            position[-self.evaluated] = k  # negative ids: not search candidates
            self.executor.submit(Job(-self.evaluated, r.recipe, r.split, r.items))
        outcomes: list[Outcome | None] = [None] * len(requests)
        for _ in requests:
            result = self.executor.next_result()
            k = position[result.job.index]
            outcomes[k] = result.outcome
            self.bar.set_postfix_str(f"{requests[k].what} ({requests[k].split})", refresh=False)
            self.bar.update(1)
        return [o.checked(r.what) for o, r in zip(outcomes, requests, strict=True) if o is not None]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.executor is not None:
            self.executor.close()
            self.executor = None

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_sources(run: RunLog) -> None:
    """Scores and export must come from the models the run scored: refuse changed source files."""
    recorded = run.meta.sources
    for path in run.config().model_folders:
        want, have = recorded.get(str(path)), fingerprint(path)
        if want is not None and want != have:
            raise EvomergeError(
                f"source model {path} changed since the run scored it (fingerprint {want[:12]} -> {have[:12]}); "
                f"restore it, or accept the change with 'evomerge resume {run.root} --force' first"
            )
