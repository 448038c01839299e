"""evomerge report: the PNGs and summary.md, with finalists and baselines scored (and cached) if missing."""

from __future__ import annotations

from pathlib import Path

from evomerge.export.report import PLOTS, write_report
from evomerge.run.log import RunLog


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
