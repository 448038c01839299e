"""Searching on the answers' log-likelihood (``search_metric: perplexity``) while accuracy reports,
end to end on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from evomerge.config.search import load_config
from evomerge.execution.executor import LocalExecutor
from evomerge.export.report import write_report
from evomerge.run.log import RunLog
from evomerge.run.search import Search
from evomerge.sources.pool import fingerprint

TASKS = ("tiny_rev", "tiny_dup")


def loglikelihood_run(tmp_path: Path, family, search_config, strategy: str, budget: int) -> tuple[RunLog, Search]:
    objectives = [{"task": t, "heldout_task": f"{t}_heldout", "metric": "acc", "search_metric": "perplexity"}
                  for t in TASKS]
    config = search_config(tmp_path, family, objectives=objectives, strategy={"name": strategy},
                           budget={"max_evals": budget})
    cfg = load_config(config)
    run = RunLog.create(tmp_path / "run", cfg, {str(p): fingerprint(p) for p in cfg.model_folders})
    search = Search(run, LocalExecutor, quiet=True)
    search.run_to_budget()
    return run, search


def test_the_strategy_is_told_the_perplexity_while_the_report_shows_accuracy(tmp_path: Path, scored_family,
                                                                             search_config) -> None:
    run, _ = loglikelihood_run(tmp_path, scored_family, search_config, "cmaes", 6)
    for r in run.candidates():
        assert r.objectives == tuple(-r.scores[t].metrics["perplexity,none"] for t in TASKS)  # lower perplexity: higher
    summary = (write_report(run.root, tmp_path / "report", quiet=True) / "summary.md").read_text()
    reported = RunLog.open(run.root)
    chosen = next(r for r in reported.candidates() if f"**best (candidate {r.index})**" in summary)
    held = reported.heldout()[chosen.key].scores
    row = next(line for line in summary.splitlines() if line.startswith(f"| **best (candidate {chosen.index})**"))
    assert row.split(" | ")[1].startswith(f"{held['tiny_rev_heldout'].metrics['acc,none']:.3f} (")


def test_natural_niches_compares_each_answers_probability(tmp_path: Path, scored_family, search_config) -> None:
    run, search = loglikelihood_run(tmp_path, scored_family, search_config, "niches", 30)
    logged = {r.index: r for r in run.candidates()}
    members = search.strategy.members()
    assert members
    for index, _, items in members:
        lls = [ll for t in TASKS for ll in logged[index].scores[t].per_item["perplexity,none"]]
        assert items == pytest.approx([math.exp(ll) for ll in lls])
        assert any(0.0 < v < 1.0 for v in items)  # a probability, not a 0/1 accuracy
