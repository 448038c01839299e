"""The export's evaluator hands independent jobs to the workers together and logs their outcomes in request order."""

from __future__ import annotations

import shutil
from pathlib import Path

from evomerge.export.evaluator import Evaluator, Request
from evomerge.export.finalists import analyze
from evomerge.run.log import RunLog

from .conftest import TASKS, FakeExecutor, fake_scores


class LastFirst(FakeExecutor):
    """Finishes the newest job first, as a free worker may; remembers how many jobs were waiting at each result."""

    waiting: list[int] = []

    def next_result(self):
        LastFirst.waiting.append(len(self.queue))
        self.queue.insert(0, self.queue.pop())
        return super().next_result()


def test_requests_are_submitted_together_and_come_back_in_request_order(tiny_run: RunLog) -> None:
    space = tiny_run.space()
    recipes = [space.to_recipe(r.x) for r in tiny_run.candidates()[:3]]
    LastFirst.waiting = []
    with Evaluator(tiny_run, LastFirst, quiet=True) as evaluate:
        outcomes = evaluate.many([Request(recipe, "calibration", f"candidate {k}") for k, recipe in enumerate(recipes)])
    assert LastFirst.waiting == [3, 2, 1]  # all three were handed over before the first result was taken
    assert [o.scores for o in outcomes] == [fake_scores(recipe, TASKS) for recipe in recipes]


def test_the_export_logs_the_same_records_whatever_order_the_workers_finish_in(tiny_run: RunLog, fake_executor,
                                                                              tmp_path: Path) -> None:
    other = RunLog.open(Path(shutil.copytree(tiny_run.root, tmp_path / "other")))
    with Evaluator(tiny_run, fake_executor, quiet=True) as in_order, Evaluator(other, LastFirst, quiet=True) as reverse:
        analyze(tiny_run, in_order, finalists=3)
        analyze(other, reverse, finalists=3)
    assert max(LastFirst.waiting) > 1  # the export did hand over several jobs at once

    def logged(run: RunLog) -> list[tuple]:
        return [(type(r).__name__, getattr(r, "name", None), getattr(r, "split", None), r.scores)
                for r in RunLog.open(run.root).records if hasattr(r, "scores")]

    assert logged(tiny_run) == logged(other)
