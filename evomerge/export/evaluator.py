"""Scoring outside the search loop (baselines, finalists): the run's own worker, started on first use.

Baselines and finalists are scored by the same Worker code, with the same sources, tasks and
batch size as the search — so their scores sit on one scale with the candidates'. The worker is
only started when something is missing from the log: an export whose scores are all cached loads
no model. Before it starts, the source files are checked against the fingerprints the run recorded,
so nothing scored on changed models ever enters the log.
"""

from __future__ import annotations

from typing import Callable, Mapping

from tqdm import tqdm

from evomerge.errors import EvomergeError
from evomerge.execution.executor import Executor, Job, LocalExecutor
from evomerge.execution.worker import Outcome, WorkerSpec
from evomerge.recipes.recipe import Recipe
from evomerge.run.log import RunLog
from evomerge.sources.pool import fingerprint

ExecutorFactory = Callable[[WorkerSpec], Executor]


class Evaluator:
    def __init__(self, run: RunLog, executor_factory: ExecutorFactory | None = None, *, quiet: bool = False):
        self.run, self.cfg, self.quiet = run, run.config(), quiet
        self.factory: ExecutorFactory = executor_factory or LocalExecutor
        self.executor: Executor | None = None
        self.evaluated = 0  # evaluations run by this evaluator (0 when everything came from the log)
        self.bar: tqdm | None = None  # one progress bar for every model scored, not a line each

    def __call__(self, recipe: Recipe, split: str, what: str,
                 items: Mapping[str, tuple[int, ...]] | None = None) -> Outcome:
        """``recipe`` on every item of ``split``, or on ``items`` (task -> document positions: a chunk)."""
        if self.executor is None:
            check_sources(self.run)
            self.executor = self.factory(WorkerSpec.from_config(self.cfg))
        if self.bar is None:
            self.bar = tqdm(desc="evomerge: scoring", unit="job", disable=self.quiet, dynamic_ncols=True)
        self.bar.set_postfix_str(f"{what} ({split})", refresh=True)
        self.evaluated += 1
        self.executor.submit(Job(-self.evaluated, recipe, split, items))  # negative ids: not search candidates
        outcome = self.executor.next_result().outcome.checked(what)
        self.bar.update(1)
        return outcome

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
