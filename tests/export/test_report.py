"""evomerge report: the PNGs and summary.md, with finalists and baselines scored (and cached) if missing."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import StrategyConfig
from evomerge.export.evaluator import Evaluator
from evomerge.export.finalists import analyze
from evomerge.export.report import PLOTS, write_report
from evomerge.run.log import RunLog

from .conftest import export_config, synthetic_run


def test_report_writes_the_plots_and_a_summary(tiny_run: RunLog, fake_executor, tmp_path: Path) -> None:
    out = write_report(tiny_run.root, tmp_path / "report", executor_factory=fake_executor, quiet=True)
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = (out / "summary.md").read_text()
    assert "| evaluations | 12 candidates told: 12 evaluated, 0 cache hits, 1 failed |" in summary
    assert "## The best candidate beside the baselines (held-out)" in summary  # nothing exported yet
    for label in ("base", "a alone", "uniform soup", "task arithmetic (λ=", "TIES (d=", "DARE-TIES (d="):
        assert f"| {label}" in summary
    assert "## Finalists" in summary and "![Pareto front](front.png)" in summary
    scored = len(fake_executor.jobs)
    assert scored > 0 and RunLog.open(tiny_run.root).heldout()
    write_report(tiny_run.root, tmp_path / "report", executor_factory=fake_executor, quiet=True)
    assert len(fake_executor.jobs) == scored  # the second report reads everything back from the log


def test_summary_states_the_gain_over_the_best_fixed_recipe_on_held_out(tiny_run: RunLog, fake_executor,
                                                                        tmp_path: Path) -> None:
    summary = (write_report(tiny_run.root, tmp_path / "report", executor_factory=fake_executor,
                            quiet=True) / "summary.md").read_text()
    with Evaluator(tiny_run, fake_executor, quiet=True) as evaluator:  # everything is in the log by now
        analysis = analyze(RunLog.open(tiny_run.root), evaluator)
    chosen, best = analysis.pick("calibration"), analysis.baselines.best_fixed("heldout")
    gain = (analysis.normalizer.mean(analysis.heldout_raw(chosen), "heldout")
            - analysis.normalizer.mean(best.heldout, "heldout"))
    assert f"**Gain over the best fixed recipe: {gain:+.3f}** mean normalized held-out score" in summary
    assert f"the best fixed recipe on held-out, {best.label}," in summary


def test_summary_says_how_to_search_the_front_of_weighted_objectives(tiny_run: RunLog, fake_executor,
                                                                     tmp_path: Path) -> None:
    summary = (write_report(tiny_run.root, tmp_path / "report", executor_factory=fake_executor, quiet=True)
               / "summary.md").read_text()
    assert ("ranked candidates by one weighted score of its 2 objectives (t0 1, t1 1); to search their "
            "Pareto front instead, set `strategy.name: nsga2`") in summary


def test_a_pareto_search_gets_no_weighted_score_note(scored_family: dict[str, Path], fake_executor,
                                                     tmp_path: Path) -> None:
    cfg = export_config(scored_family, strategy=StrategyConfig(name="nsga2"))
    run = synthetic_run(tmp_path / "run", cfg)
    summary = (write_report(run.root, tmp_path / "report", executor_factory=fake_executor, quiet=True)
               / "summary.md").read_text()
    assert "weighted score" not in summary
