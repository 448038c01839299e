"""A session records the memory plan its workers follow; ``status`` shows it."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import load_config
from evomerge.execution.executor import LocalExecutor
from evomerge.run.log import RunLog
from evomerge.run.search import Search
from evomerge.run.status import summarize


def test_a_session_logs_its_plan_and_status_shows_it(tmp_path: Path, scored_family, search_config) -> None:
    cfg = load_config(search_config(tmp_path, scored_family, budget={"max_evals": 2},
                                    execution={"memory_budget": "4GB"}))
    run = RunLog.create(tmp_path / "run", cfg, {})
    Search(run, LocalExecutor, quiet=True).run_to_budget()
    plans = RunLog.open(run.root).plans()
    assert len(plans) == 1 and plans[0].plan.budget == 4 * 10**9 and plans[0].plan.thresholds == "sorted"
    lines = summarize(RunLog.open(run.root))
    assert "\n".join(plans[0].plan.lines()) in "\n".join(lines)
