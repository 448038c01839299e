"""Finalists, pick rules, and the held-out / baseline records cached in the run log."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from evomerge import pareto
from evomerge.config.search import BaselinesConfig
from evomerge.errors import EvomergeError
from evomerge.export.evaluator import Evaluator
from evomerge.export.finalists import analyze
from evomerge.run.log import RunLog
from evomerge.run.records import HeldoutRecord

from .conftest import export_config, synthetic_run


def test_pick_rules(tiny_run: RunLog, fake_executor) -> None:
    with Evaluator(tiny_run, fake_executor, quiet=True) as ev:
        a = analyze(tiny_run, ev, finalists=3)
        norm = a.normalizer
        assert len(a.finalists) == min(3, len(a.front))
        cal = [norm.mean(a.calibration_raw(r), "calibration") for r in a.finalists]
        assert cal == sorted(cal, reverse=True)  # finalists: best mean normalized calibration first
        best = max(a.finalists, key=lambda r: norm.mean(a.heldout_raw(r), "heldout"))
        assert a.pick("heldout").index == best.index
        assert a.pick("calibration").index == a.finalists[0].index  # chosen without held-out data
        assert a.pick("knee").index == pareto.knee(a.front, lambda r: r.objectives).index
        assert a.pick("7").index == 7
        assert a.heldout_raw(a.candidate(7)) is not None  # a picked non-finalist is re-scored too
        with pytest.raises(EvomergeError, match="no candidate 99"):
            a.pick(99)
        with pytest.raises(EvomergeError, match="candidate 5 failed"):
            a.pick(5)
        with pytest.raises(EvomergeError, match="--pick must be"):
            a.pick("best")


def test_heldout_and_baselines_are_scored_once_and_cached_in_the_log(tiny_run: RunLog, fake_executor) -> None:
    with Evaluator(tiny_run, fake_executor, quiet=True) as ev:
        first = analyze(tiny_run, ev, finalists=2)
    assert ev.evaluated == len(fake_executor.jobs) > 0
    baselines = tiny_run.baselines()
    # base, 2 sources, soup, TSV-M, RegMean, Fisher on both splits; the grids on calibration (15 λ; 3 densities ×
    # 15 λ twice) and each grid's chosen member on held-out (the greedy soup of 2 sources is a source or the soup:
    # read back)
    assert len(baselines) == 7 * 2 + 15 + 2 * 45 + 3
    assert {r.split for r in baselines} == {"calibration", "heldout"}
    held = tiny_run.of_type(HeldoutRecord)
    assert sorted(r.key for r in held) == sorted(r.key for r in first.finalists)

    again = RunLog.open(tiny_run.root)  # a later command reads everything back
    with Evaluator(again, fake_executor, quiet=True) as ev2:
        second = analyze(again, ev2, finalists=2)
    assert ev2.evaluated == 0 and ev2.executor is None  # no worker was even started
    assert [r.index for r in second.finalists] == [r.index for r in first.finalists]
    assert second.baselines == first.baselines


def test_sources_alone_are_the_experts_and_each_grid_is_chosen_on_calibration(tiny_run: RunLog, fake_executor) -> None:
    with Evaluator(tiny_run, fake_executor, quiet=True) as ev:
        a = analyze(tiny_run, ev, finalists=1)
    rows = {r.name: r for r in a.baselines.rows}
    assert a.normalizer.normalize(rows["source0"].heldout, "heldout")[0] == 1.0
    assert a.normalizer.normalize(rows["source1"].heldout, "heldout")[1] == 1.0
    for family, grid in a.baselines.grids.items():
        best = max(grid, key=lambda item: a.normalizer.rank(item[1], "calibration"))[0]
        assert best.name in rows and [r.fixed.family for r in a.baselines.rows].count(family) == 1
    assert a.baselines.best_fixed("heldout").fixed.family in ("soup", "task_arithmetic", "ties", "dare_ties", "tsvm",
                                                              "regmean", "fisher", "greedy_soup")


def test_the_configs_baselines_grid_is_the_grid_the_export_scores(tmp_path: Path, scored_family,
                                                                  fake_executor) -> None:
    cfg = export_config(scored_family, baselines=BaselinesConfig(lambdas=(0.5, 1.0), densities=(0.7,)))
    with Evaluator(run := synthetic_run(tmp_path / "run", cfg), fake_executor, quiet=True) as ev:
        a = analyze(run, ev, finalists=1)
    assert {family: [m.name for m, _ in grid] for family, grid in a.baselines.grids.items()} == {
        "task_arithmetic": ["task_arithmetic@0.5", "task_arithmetic@1"],
        "ties": ["ties@d0.7,l0.5", "ties@d0.7,l1"], "dare_ties": ["dare_ties@d0.7,l0.5", "dare_ties@d0.7,l1"]}
    scored = {r.name for r in run.baselines()}
    assert not any(name.startswith(("task_arithmetic@0.1", "ties@d0.3", "dare_ties@d0.5")) for name in scored)


def test_a_run_without_successful_candidates_is_refused(tmp_path: Path, tiny_family, fake_executor) -> None:
    run = synthetic_run(tmp_path / "run", export_config(tiny_family), n=2, fail=(0, 1))
    with Evaluator(run, fake_executor, quiet=True) as ev, pytest.raises(EvomergeError, match="no successful candidate"):
        analyze(run, ev)


def test_upto_analyzes_the_run_as_it_stood_at_that_budget(tiny_run: RunLog, fake_executor) -> None:
    upto = 4
    with Evaluator(tiny_run, fake_executor, quiet=True) as ev:
        a = analyze(tiny_run, ev, finalists=2, upto=upto)
    assert [r.index for r in a.candidates] == list(range(upto))
    assert a.front and all(r.index < upto for r in a.front)
    assert all(r.index < upto for r in a.finalists)


def test_the_default_pick_ignores_held_out_scores(tiny_run: RunLog, fake_executor) -> None:
    with Evaluator(tiny_run, fake_executor, quiet=True) as ev:
        a = analyze(tiny_run, ev, finalists=3)
        assert len(a.finalists) >= 2
        before = a.pick("calibration").index
        last = a.finalists[-1]  # make the worst-on-calibration finalist the best on held-out
        for key, held in list(a.heldout.items()):
            scale = 10.0 if key == last.key else 0.1
            a.heldout[key] = replace(held, scores={t: replace(s, metrics={k: v * scale for k, v in s.metrics.items()})
                                                   for t, s in held.scores.items()})
        assert a.pick("heldout").index == last.index
        assert a.pick("calibration").index == before
