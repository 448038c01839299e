"""Racing a generation against its selection cut (scoring.fidelity: racing): decisions, records, resume."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.config.search import load_config
from evomerge.execution.executor import LocalExecutor
from evomerge.run.log import RunLog
from evomerge.run.racing import Chunks, Verdict, verdicts
from evomerge.run.search import Search
from evomerge.scoring.partial import Objective, fitness
from evomerge.sources.pool import fingerprint

ACC = [Objective("mean", 1.0, 1.0)]
RACING = {"fidelity": "racing", "chunk_items": 3, "racing_z": 1.0}
CMAES = {"name": "cmaes", "options": {"popsize": 4}}


def generation() -> list[list[list[float]]]:
    """Six members on 40 common items: two strong, two weak, two at the cut (keep 3)."""
    strong = [1.0] * 36 + [0.0] * 4
    weak = [0.0] * 36 + [1.0] * 4
    cut = [1.0, 0.0] * 20
    near = [0.0, 1.0] * 20
    return [[strong], [weak], [cut], [strong[:]], [weak[:]], [near]]


def test_clear_winners_and_losers_resolve_after_a_few_items_and_the_cut_pair_does_not() -> None:
    members = [[m[0][:10]] for m in generation()]  # the first chunk of 10 items
    assert verdicts(members, 3, ACC, z=1.5) == [Verdict.ABOVE, Verdict.BELOW, None, Verdict.ABOVE, Verdict.BELOW, None]


def test_a_member_stopped_below_is_below_the_cut_on_its_full_score() -> None:
    full = generation()
    order = sorted(range(len(full)), key=lambda i: -fitness(ACC, full[i]))
    kept = set(order[:3])
    for n in (4, 10, 20, 40):
        for i, v in enumerate(verdicts([[m[0][:n]] for m in full], 3, ACC, z=1.5)):
            if v is Verdict.BELOW:
                assert i not in kept
            if i in kept:
                assert v is not Verdict.BELOW  # a member above the cut is never stopped as a loser


def test_failed_members_rank_below_and_no_cut_means_no_stops() -> None:
    members = generation()
    assert verdicts([None, *members[:2]], 1, ACC, z=1.5)[0] is Verdict.BELOW
    assert verdicts(members[:3], 3, ACC, z=1.5) == [None, None, None]


def test_chunks_slice_a_logged_candidate_back_into_its_chunks() -> None:
    chunks = Chunks.plan({"a": 12, "b": 5}, chunk_items=6, seed=0)
    assert chunks.count == 3 and chunks.n_items(3) == 17
    assert sorted(p for k in range(3) for p in chunks.items(k)["a"]) == list(range(12))
    assert [len(chunks.items(k).get("b", ())) for k in range(3)] == [2, 2, 1]


def start_run(tmp_path: Path, config: Path, name: str = "run") -> RunLog:
    cfg = load_config(config)
    return RunLog.create(tmp_path / name, cfg, {str(p): fingerprint(p) for p in cfg.model_folders})


def test_racing_scores_a_generation_in_chunks_and_records_what_it_scored(tmp_path: Path, scored_family,
                                                                         search_config) -> None:
    config = search_config(tmp_path, scored_family, strategy=CMAES, scoring=RACING, budget={"max_evals": 13})
    run = start_run(tmp_path, config)
    Search(run, LocalExecutor, quiet=True).run_to_budget()
    records = run.candidates()
    initial = [r for r in records if r.operator == "init"]
    raced = [r for r in records if r.operator == "cma"]
    assert len(raced) == 8 and all(r.chunks is None and r.items is None for r in initial)
    assert all(1 <= r.chunks <= 8 and r.items == sum(len(s.per_item["perplexity,none"]) for s in r.scores.values())
               for r in raced)
    assert any(r.items < 24 for r in raced)  # some were resolved before their last chunk


def test_a_racing_run_resumed_from_any_prefix_of_its_log_equals_the_whole_run(tmp_path: Path, scored_family,
                                                                               search_config) -> None:
    config = search_config(tmp_path, scored_family, strategy=CMAES, scoring=RACING, budget={"max_evals": 13})
    whole = start_run(tmp_path, config, "whole")
    Search(whole, LocalExecutor, quiet=True).run_to_budget()
    lines = (whole.root / "log.jsonl").read_text().splitlines()
    expected = [{**r.__dict__, "time": None, "merge_s": 0, "score_s": 0} for r in whole.candidates()]
    for cut in (6, 8, 10):  # mid-generation: the resumed run must remake the decisions the log's prefix saw
        prefix = start_run(tmp_path, config, f"prefix{cut}")
        kept = [line for line in lines if '"candidate"' in line][:cut]
        with open(prefix.root / "log.jsonl", "a") as f:
            f.write("".join(line + "\n" for line in kept))
        resumed = RunLog.open(prefix.root)
        Search(resumed, LocalExecutor, quiet=True).run_to_budget()
        got = [{**r.__dict__, "time": None, "merge_s": 0, "score_s": 0} for r in RunLog.open(prefix.root).candidates()]
        assert got == expected, cut


def test_the_front_is_completed_on_every_calibration_item_once(tmp_path: Path, scored_family, search_config) -> None:
    from evomerge import pareto
    from evomerge.export.evaluator import Evaluator
    from evomerge.export.finalists import complete_front, successful
    from evomerge.run.records import CompletedRecord

    config = search_config(tmp_path, scored_family, strategy=CMAES, scoring=RACING, budget={"max_evals": 13})
    run = start_run(tmp_path, config)
    Search(run, LocalExecutor, quiet=True).run_to_budget()
    with Evaluator(run, quiet=True) as evaluate:
        candidates = complete_front(run, run.candidates(), evaluate)
    front = pareto.front([r for r in successful(candidates) if r.cached_from is None], lambda r: r.objectives)
    completed = {r.key for r in run.of_type(CompletedRecord)}
    assert completed and all(r.items is None or r.key in completed for r in front)
    assert all(len(s.per_item["perplexity,none"]) == 12 for r in front for s in r.scores.values())
    with Evaluator(RunLog.open(run.root), quiet=True) as again:
        complete_front(RunLog.open(run.root), RunLog.open(run.root).candidates(), again)
    assert again.evaluated == 0  # read back from the log


def test_fixed_recipes_the_search_started_from_are_read_from_the_log_not_scored(tmp_path: Path, scored_family,
                                                                                 search_config) -> None:
    from evomerge.export.baselines import cached_or_scored, recipe_of, scored_start
    from evomerge.recipes.fixed import fixed_recipes

    config = search_config(tmp_path, scored_family, strategy=CMAES, scoring=RACING, budget={"max_evals": 5})
    run = start_run(tmp_path, config)
    Search(run, LocalExecutor, quiet=True).run_to_budget()
    members = [m for family in fixed_recipes(2).values() for m in family]
    reused = [m for m in members if scored_start(run, recipe_of(run.config(), m)) is not None]
    assert {m.name for m in reused} == {"ties@d0.3,l1", "ties@d0.5,l1", "ties@d0.7,l1"}  # the run's TIES seed points

    class Never:
        def many(self, requests):
            assert not requests, "a start point was scored again"
            return []

    start = scored_start(run, recipe_of(run.config(), reused[0]))
    logged = cached_or_scored(run, [(reused[0], "calibration")], Never())
    assert logged[reused[0].name, "calibration"].scores == start.scores


def test_task_arithmetic_with_lambda_or_with_weights_is_the_same_merge(tiny_config) -> None:
    from dataclasses import replace

    from evomerge.export.baselines import recipe_of
    from evomerge.recipes.fixed import fixed_recipes
    from evomerge.recipes.recipe import GroupSpec

    fixed = recipe_of(tiny_config, fixed_recipes(2)["task_arithmetic"][6])  # weights 1, λ 0.7
    scaled = replace(fixed, default=GroupSpec("task_arithmetic", {"weight": (0.7, 0.7 + 1e-12)}, {"lam": 1.0}))
    assert scaled.same_merge(fixed)
    assert not replace(scaled,
                       default=GroupSpec("task_arithmetic", {"weight": (0.7, 0.6)}, {"lam": 1.0})).same_merge(fixed)
    ties = replace(fixed, default=GroupSpec("ties", {"weight": (0.7, 0.7), "density": (0.5, 0.5)}, {"lam": 1.0}))
    assert not ties.same_merge(replace(ties, default=GroupSpec("ties", {"weight": (1.0, 1.0), "density": (0.5, 0.5)},
                                                              {"lam": 0.7})))  # TIES divides by the weights' sum


def test_status_counts_items_scored_against_full_scoring() -> None:
    from dataclasses import replace

    from evomerge.config.search import ScoringConfig
    from evomerge.run.racing import scoring_summary
    from evomerge.run.records import CandidateRecord
    from evomerge.scoring.result import TaskScore

    def record(index: int, n: int, items: int | None, cached_from: int | None = None) -> CandidateRecord:
        score = TaskScore("t", "acc", "none", {"acc": True}, {"acc,none": 0.5}, {"acc,none": (0.5,) * n})
        return CandidateRecord(index, f"k{index}", (0.5,), (), "x", 1, {"t": score}, None, (0.5,),
                               cached_from=cached_from, chunks=None if items is None else 1, items=items)

    records = [record(0, 100, None), record(1, 25, 25), record(2, 50, 50), record(3, 25, 25, cached_from=1)]
    line = scoring_summary(ScoringConfig(fidelity="racing", chunk_items=25), records)
    assert line == ("racing (chunks of 25 items, z 1.5): 175 of 300 calibration items scored (58 per candidate of "
                    "100); 42% saved")
    counted = [replace(r, tokens=10 * (r.items or 100)) for r in records]
    line = scoring_summary(ScoringConfig(fidelity="racing", chunk_items=25), counted)
    assert line.endswith(", 1,750 of 3,000 tokens (583 per candidate of 1,000); 42% saved")


def test_tokens_scored_survive_resume(tmp_path: Path, scored_family, search_config) -> None:
    from evomerge.run.racing import scoring_cost

    config = search_config(tmp_path, scored_family, strategy=CMAES, scoring=RACING, budget={"max_evals": 13})
    whole = start_run(tmp_path, config, "whole")
    Search(whole, LocalExecutor, quiet=True).run_to_budget()
    prefix = start_run(tmp_path, config, "prefix")
    kept = [line for line in (whole.root / "log.jsonl").read_text().splitlines() if '"candidate"' in line][:7]
    with open(prefix.root / "log.jsonl", "a") as f:
        f.write("".join(line + "\n" for line in kept))
    Search(RunLog.open(prefix.root), LocalExecutor, quiet=True).run_to_budget()
    cost = scoring_cost(RunLog.open(prefix.root).candidates())
    assert cost is not None and cost.tokens is not None and 0 < cost.tokens < cost.full_tokens
    assert cost == scoring_cost(whole.candidates())


def test_racing_knobs_are_checked_where_the_config_is_read(tmp_path: Path, scored_family, search_config) -> None:
    from evomerge.errors import EvomergeError

    for bad, field in (({"fidelity": "cheap"}, "fidelity"), ({"chunk_items": 1}, "chunk_items"),
                       ({"racing_z": 0}, "racing_z")):
        with pytest.raises(EvomergeError, match=field):
            load_config(search_config(tmp_path / field, scored_family, scoring=bad))


def test_raced_grids_keep_the_best_fixed_row_and_the_pick_of_scoring_every_member_in_full(tmp_path: Path, scored_family,
                                                                                          search_config) -> None:
    import shutil

    from evomerge.export.evaluator import Evaluator
    from evomerge.export.finalists import analyze

    config = search_config(tmp_path, scored_family, scoring={"chunk_items": 3}, budget={"max_evals": 6})
    Search(start_run(tmp_path, config, "full"), LocalExecutor, quiet=True).run_to_budget()
    shutil.copytree(tmp_path / "full", tmp_path / "raced")
    out = {}
    for name, race in (("full", False), ("raced", True)):
        run = RunLog.open(tmp_path / name)
        with Evaluator(run, quiet=True) as evaluate:
            a = analyze(run, evaluate, finalists=2, race_baselines=race)
            best = a.baselines.best_fixed("heldout")
            out[name] = (best.name, best.calibration, best.heldout, a.pick("calibration").index, a.baselines.stopped)
    assert out["raced"][:4] == out["full"][:4]
    assert out["raced"][4] and not out["full"][4]  # the grids were raced: some members stopped early


def test_the_export_completes_the_finalists_it_compares_not_the_whole_front(tmp_path: Path, scored_family,
                                                                           search_config) -> None:
    import shutil

    from evomerge.export.evaluator import Evaluator
    from evomerge.export.finalists import analyze, complete_front
    from evomerge.run.records import CompletedRecord

    config = search_config(tmp_path, scored_family, strategy=CMAES, scoring=RACING, budget={"max_evals": 29})
    Search(start_run(tmp_path, config, "front"), LocalExecutor, quiet=True).run_to_budget()
    shutil.copytree(tmp_path / "front", tmp_path / "finalists")
    whole = RunLog.open(tmp_path / "front")
    with Evaluator(whole, quiet=True) as evaluate:
        complete_front(whole, whole.candidates(), evaluate)
    run = RunLog.open(tmp_path / "finalists")
    with Evaluator(run, quiet=True) as evaluate:
        a = analyze(run, evaluate, finalists=1)
    completed = {r.key for r in run.of_type(CompletedRecord)}
    assert all(r.items is None or r.key in completed for r in a.finalists)
    assert len(completed) < len(whole.of_type(CompletedRecord))


@pytest.mark.parametrize("name", ["optuna", "niches", "random"])
def test_racing_with_a_strategy_that_cannot_race_is_refused_in_one_line_naming_those_that_can(
        tmp_path: Path, scored_family, search_config, capsys, name: str) -> None:
    from evomerge.cli import main

    config = search_config(tmp_path, scored_family, strategy={"name": name}, scoring=RACING)
    assert main(["search", str(config), "--check"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"strategy '{name}' cannot race" in err and "racing works with cmaes, nsga2" in err


def test_the_strategies_that_describe_their_selection_pass_the_racing_check(tiny_config) -> None:
    from dataclasses import replace

    from evomerge.config.search import StrategyConfig
    from evomerge.run.preflight import check_fidelity

    racing = replace(tiny_config.scoring, **RACING)
    for name in ("cmaes", "nsga2"):
        check_fidelity(replace(tiny_config, strategy=StrategyConfig(name), scoring=racing))
