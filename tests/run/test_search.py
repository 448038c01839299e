"""The driver: budget, cache, failed candidates, and resume after SIGKILL equal to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.cli import main
from evomerge.config.search import load_config
from evomerge.errors import EvomergeError, RunStopped
from evomerge.execution.executor import LocalExecutor
from evomerge.execution.worker import Worker
from evomerge.materialize.statistics import statistics_path
from evomerge.run.log import RunLog
from evomerge.run.records import BudgetRecord, CandidateRecord, SessionRecord
from evomerge.run.search import FailureWatch, Search
from evomerge.scoring.objectives import WORST
from evomerge.sources.pool import fingerprint
from evomerge.strategies import Candidate

REPO = Path(__file__).resolve().parents[2]
COMPARED = ("index", "key", "x", "parents", "operator", "generation", "scores", "objectives", "error", "cached_from",
            "chunks", "items")


def start_run(tmp_path: Path, config: Path) -> RunLog:
    cfg = load_config(config)
    return RunLog.create(tmp_path / "run", cfg, {str(p): fingerprint(p) for p in cfg.model_folders})


class Scripted:
    """A stand-in strategy that asks a fixed list of points (to provoke duplicates and failures)."""

    needs_items = False

    def __init__(self, points: list[tuple[float, ...]]):
        self.points, self.told = list(points), []

    def ask(self) -> Candidate | None:
        return Candidate(self.points.pop(0), operator="scripted") if self.points else None

    def tell(self, candidate, evaluation) -> None:
        self.told.append(evaluation)


class CountingExecutor(LocalExecutor):
    submitted: list[int] = []

    def submit(self, job) -> None:
        CountingExecutor.submitted.append(job.index)
        super().submit(job)


def scripted_search(run: RunLog, points) -> tuple[Search, Scripted]:
    search = Search(run, CountingExecutor, quiet=True)
    search.strategy = Scripted(points)
    CountingExecutor.submitted = []
    return search, search.strategy


def test_search_logs_every_candidate_up_to_the_budget(tmp_path: Path, scored_family, search_config) -> None:
    run = start_run(tmp_path, search_config(tmp_path, scored_family, budget={"max_evals": 7}))
    told = Search(run, LocalExecutor, quiet=True).run_to_budget()
    records = run.candidates()
    assert told == 7 and [r.index for r in records] == list(range(7))
    assert all(r.ok and len(r.objectives) == 2 for r in records)
    assert isinstance(run.records[-1], SessionRecord) and run.records[-1].stopped is None


def test_duplicate_candidates_are_evaluated_once(tmp_path: Path, scored_family, search_config) -> None:
    run = start_run(tmp_path, search_config(tmp_path, scored_family))
    dim = Search(run, CountingExecutor, quiet=True).space.dim
    a, b = (0.5,) * dim, (0.25,) * dim
    search, strategy = scripted_search(run, [a, b, a, a, b])
    run.append(BudgetRecord(5))
    search.run_to_budget()
    records = run.candidates()
    assert CountingExecutor.submitted == [0, 1]
    assert [r.cached_from for r in records] == [None, None, 0, 0, 1]
    assert records[2].scores == records[0].scores
    assert [e.objectives for e in strategy.told][2] == records[0].objectives


def test_failed_candidate_is_logged_scored_worst_and_the_run_goes_on(tmp_path: Path, scored_family,
                                                                     search_config) -> None:
    config = search_config(tmp_path, scored_family,
                           genome={"methods": ["task_arithmetic"], "bounds": {"weight": [0.0, 1e39]}})
    run = start_run(tmp_path, config)
    dim = Search(run, CountingExecutor, quiet=True).space.dim
    search, strategy = scripted_search(run, [(1.0,) * dim, (0.0,) * dim])
    run.append(BudgetRecord(2))
    search.run_to_budget()
    bad, good = run.candidates()
    assert "NaN/Inf" in bad.error and bad.scores is None
    assert bad.objectives == (WORST, WORST) and strategy.told[0].failed
    assert good.ok and good.objectives[0] > WORST


def test_a_run_whose_first_candidates_all_fail_stops_and_keeps_its_log(tmp_path: Path, scored_family,
                                                                       search_config) -> None:
    config = search_config(tmp_path, scored_family,
                           genome={"methods": ["task_arithmetic"], "bounds": {"weight": [1e39, 1e39]}},
                           budget={"max_evals": 50, "stop_after_failures": 4})
    run = start_run(tmp_path, config)
    with pytest.raises(RunStopped,
                       match="the first 4 candidates all failed; the last with: CandidateFailed: merged tensor"):
        Search(run, LocalExecutor, quiet=True).run_to_budget()
    again = RunLog.open(run.root)
    assert len(again.candidates()) == 4 and "the first 4" in again.sessions()[-1].stopped


def test_a_disk_failure_stops_the_run_without_logging_the_candidate_and_a_rerun_scores_it(
        tmp_path: Path, scored_family, search_config, monkeypatch) -> None:
    run = start_run(tmp_path, search_config(tmp_path, scored_family, budget={"max_evals": 5}))
    merges = Worker.materialize

    def disk_full_at_the_third(worker: Worker, recipe) -> None:
        if len(RunLog.open(run.root).candidates()) == 2:
            raise OSError(28, "No space left on device")
        merges(worker, recipe)

    monkeypatch.setattr(Worker, "materialize", disk_full_at_the_third)
    with pytest.raises(EvomergeError, match="candidate 2 could not be scored .* No space left on device"):
        Search(run, LocalExecutor, quiet=True).run_to_budget()
    assert [r.index for r in RunLog.open(run.root).candidates()] == [0, 1]
    monkeypatch.setattr(Worker, "materialize", merges)
    Search(RunLog.open(run.root), LocalExecutor, quiet=True).run_to_budget()
    assert [r.ok for r in RunLog.open(run.root).candidates()] == [True] * 5


def test_genes_of_regmean_and_fisher_merge_with_statistics_the_run_computes_in_its_folder(tmp_path: Path, scored_family,
                                                                                   search_config) -> None:
    run = start_run(tmp_path, search_config(tmp_path, scored_family,
                                            genome={"methods": ["task_arithmetic", "regmean", "fisher"]}))
    space = Search(run, CountingExecutor, quiet=True).space
    points = [space.encode(method=m, weight=[0.7, 0.4]) for m in ("task_arithmetic", "regmean", "fisher")]
    mixed = space.encode_units(lambda unit: {"method": "fisher" if unit.startswith("layers.") else "regmean",
                                             "weight": [0.7, 0.4]})
    search, _ = scripted_search(run, [*points, mixed])
    run.append(BudgetRecord(4))
    search.run_to_budget()
    records = run.candidates()
    assert all(r.ok for r in records) and len({r.objectives for r in records}) == 4, [r.error for r in records]
    recipes = [space.to_recipe(r.x) for r in records]
    assert [r.statistics for r in recipes] == [None, run.statistics_dir, run.statistics_dir, run.statistics_dir]
    files = [statistics_path(run.statistics_dir, kind, k) for kind in ("gram", "fisher") for k in range(2)]
    assert sorted(run.statistics_dir.iterdir()) == sorted(files)  # one file per kind and source, no leftovers
    out = tmp_path / "model"
    assert main(["export", str(run.root), "--out", str(out), "--pick", "2", "--rescore-heldout", "1", "--quiet"]) == 0
    assert yaml.safe_load((out / "evomerge_recipe.yaml").read_text())["statistics"] == str(run.statistics_dir)
    assert not (out / "mergekit.yaml").exists()  # mergekit has no Fisher averaging


def failure(index: int, error: str | None) -> CandidateRecord:
    return CandidateRecord(index, f"k{index}", (0.5,), (), "x", 0, None, error, (0.0,))


def test_failures_with_one_cause_in_a_row_stop_a_run_that_had_successes() -> None:
    watch = FailureWatch(3)
    verdicts = [watch.see(failure(i, e))
                for i, e in enumerate([None, "KeyError: 'x'", "OSError", "KeyError: 'x'", "KeyError: 'x'"])]
    assert verdicts[:4] == [None] * 4  # a different cause broke the streak
    assert verdicts[4] is None
    assert watch.see(failure(5, "KeyError: 'x'")) == "3 candidates in a row failed with the same cause: KeyError: 'x'"


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "evomerge.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def candidate_lines(run_dir: Path) -> int:
    log = run_dir / "log.jsonl"
    return sum(1 for line in log.read_text().splitlines() if '"candidate"' in line) if log.exists() else 0


def kill_after(proc: subprocess.Popen, run_dir: Path, lines: int, extra_s: float) -> int:
    """SIGKILL once the log holds ``lines`` candidates, plus ``extra_s`` (to land mid-evaluation); returns the
    candidates logged by then. Asserts the kill hit the running process: a run that ended first (finished or
    failed) would leave the resume test comparing two whole runs."""
    deadline = time.time() + 120
    while candidate_lines(run_dir) < lines and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(extra_s)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the kill: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, f"the run exited with {proc.returncode} before the SIGKILL landed"
    return candidate_lines(run_dir)


def comparable(run_dir: Path) -> list[dict]:
    return [{k: getattr(r, k) for k in COMPARED} for r in RunLog.open(run_dir).candidates()]


# Strategy settings and budgets long enough for several generations: CMA-ES and NSGA-II update their
# state at each generation edge, the resumed run must reproduce those updates from the log.
# (strategy section, budget, the last generation the budget reaches)
# (5 seed points: each source alone, TIES at three densities)
RESUMABLE = {
    "cmaes": ({"name": "cmaes", "options": {"popsize": 4}}, 21, 4),  # 5 seed points, then 4 generations of 4
    "cmaes-racing": ({"name": "cmaes", "options": {"popsize": 4}}, 21, 4),  # the same, generations raced in chunks
    "niches": ({"name": "niches"}, 14, 1),  # steady state: every child competes at once
    "nsga2": ({"name": "nsga2", "options": {"population": 4}}, 17, 3),  # the 5 seeds, then generations 1-3 of 4
    "nsga2-racing": ({"name": "nsga2", "options": {"population": 4}}, 17, 3),  # the same, children raced in chunks
    "optuna": ({"name": "optuna", "options": {"n_startup_trials": 4}}, 12, 1),  # TPE proposes after the seeds
}


SMALL_GRID = {"lambdas": [0.5, 1.0], "densities": [0.5]}


@pytest.mark.slow
@pytest.mark.parametrize("strategy", sorted(RESUMABLE))
def test_run_killed_repeatedly_and_resumed_equals_an_uninterrupted_run(tmp_path: Path, scored_family, search_config,
                                                                       strategy) -> None:
    settings, budget, generations = RESUMABLE[strategy]
    scoring = {"fidelity": "racing", "chunk_items": 3, "racing_z": 1.0} if strategy.endswith("racing") else {}
    # the exports compare the models the two runs export: a small grid of fixed recipes is enough beside them
    config = search_config(tmp_path, scored_family, strategy=settings, budget={"max_evals": budget}, scoring=scoring,
                           baselines=SMALL_GRID)
    whole, pieces = tmp_path / "whole", tmp_path / "pieces"
    assert cli("search", str(config), "--run-dir", str(whole), "--quiet").wait() == 0
    assert max(r.generation for r in RunLog.open(whole).candidates()) == generations

    start = ["search", str(config), "--run-dir", str(pieces), "--quiet"]
    assert kill_after(cli(*start), pieces, 0, 0.0) < budget  # during start-up
    for lines, extra in [(2, 0.0), (budget // 3, 0.08), (2 * budget // 3, 0.15)]:  # after a record, then mid-evaluation
        runner = ["resume", str(pieces), "--quiet"] if (pieces / "log.jsonl").exists() else start
        killed_at = kill_after(cli(*runner), pieces, lines, extra)
        # a tiny run can log its last candidates within ``extra`` (its epilogue still running, so the kill still
        # hits it): only the kill right at its mark must land short of the budget
        assert lines <= killed_at and (extra > 0 or killed_at < budget), "killed short of its mark or too late"
    final = cli("resume", str(pieces), "--quiet")
    assert final.wait() == 0, final.stderr.read()
    assert comparable(pieces) == comparable(whole)

    for run_dir in (whole, pieces):
        assert main(["export", str(run_dir), "--out", f"{run_dir}-model", "--rescore-heldout", "2", "--quiet"]) == 0
    exported = [load_file(Path(f"{d}-model") / "model.safetensors") for d in (whole, pieces)]
    assert exported[0].keys() == exported[1].keys()
    assert all(torch.equal(exported[0][k], exported[1][k]) for k in exported[0])
