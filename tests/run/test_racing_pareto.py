"""Racing an NSGA-II generation against its survival (Selection rule "pareto"): decisions, the run, resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evomerge.config.search import load_config
from evomerge.execution.executor import LocalExecutor
from evomerge.run.log import RunLog
from evomerge.run.racing import ParetoRace, Verdict
from evomerge.run.search import Search
from evomerge.scoring.partial import Objective
from evomerge.sources.pool import fingerprint
from evomerge.strategies.operators import nsga2_survival

TWO = [Objective("mean", 1.0, 0.5), Objective("mean", 1.0, 0.5)]
N_ITEMS = 400


def member(*rates: float, seed: int) -> list[list[float]]:
    """Per objective, ``N_ITEMS`` pass/fail items of which a ``rate`` share pass, in a seeded order."""
    rng = np.random.default_rng(seed)
    return [rng.permutation([1.0] * round(r * N_ITEMS) + [0.0] * (N_ITEMS - round(r * N_ITEMS))).tolist()
            for r in rates]


def race(members: list, fixed: list, keep: int, n: int, z: float = 1.5) -> list[Verdict | None]:
    """The verdicts on the first ``n`` items of the members (the fixed candidates scored on every item)."""
    r = ParetoRace(keep, len(members) + len(fixed), z)
    r.fixed.extend(fixed)
    return r.verdicts([None if m is None else [v[:n] for v in m] for m in members], TWO)


def test_a_member_dominated_by_as_many_as_survive_stops_below_and_one_dominated_by_fewer_does_not() -> None:
    strong = [member(0.8, 0.8, seed=s) for s in range(3)]
    weak = member(0.2, 0.3, seed=9)
    assert race([weak], strong, keep=3, n=40) == [Verdict.BELOW]
    other = member(0.1, 0.9, seed=8)  # neither dominates the other
    assert race([weak], [*strong, other], keep=4, n=N_ITEMS) == [None]  # 3 dominate it, 4 survive: it may be the 4th


def test_a_member_on_a_first_front_no_larger_than_what_survives_is_kept_early() -> None:
    a, b = member(0.9, 0.6, seed=1), member(0.6, 0.9, seed=2)
    c, d = member(0.8, 0.1, seed=3), member(0.1, 0.8, seed=4)  # dominated by a, b
    assert race([a], [b, c, d], keep=2, n=N_ITEMS) == [Verdict.ABOVE]
    assert race([a], [b, c, d], keep=1, n=N_ITEMS) == [None]  # the front is cut by crowding: not resolved


def test_a_member_dominating_all_but_those_that_survive_is_kept_early() -> None:
    best = member(0.9, 0.9, seed=0)
    assert race([best], [member(0.3, 0.4, seed=s) for s in range(1, 4)], keep=1, n=40) == [Verdict.ABOVE]


def test_a_repeat_of_a_member_counts_as_possibly_on_the_first_front() -> None:
    a, b = member(0.9, 0.6, seed=1), member(0.6, 0.9, seed=2)
    r = ParetoRace(2, 4, 1.5)  # two members, one fixed, one repeat not raced
    r.fixed.append(member(0.1, 0.1, seed=3))
    assert r.verdicts([a, b], TWO) == [None, None]  # three may be non-dominated, two survive


def test_failed_candidates_are_below_and_dominated_by_every_scored_one() -> None:
    best = member(0.9, 0.9, seed=0)
    assert race([None, best], [None], keep=1, n=40) == [Verdict.BELOW, Verdict.ABOVE]


def test_no_member_is_stopped_on_the_wrong_side_of_survival_on_its_full_scores() -> None:
    rates = [(0.9, 0.9), (0.1, 0.15), (0.85, 0.35), (0.5, 0.5), (0.7, 0.6), (0.6, 0.7), (0.3, 0.8), (0.2, 0.3)]
    pool = [member(*r, seed=s) for s, r in enumerate(rates)]
    members, fixed, keep = pool[:4], pool[4:], 4
    full = np.array([[np.mean(v) for v in m] for m in pool])
    survivors = set(nsga2_survival(full, keep).tolist())
    decided = [race(members, fixed, keep, n) for n in (10, 20, 40, 100, N_ITEMS)]
    assert any(v is not None for verdicts in decided for v in verdicts)  # some are resolved on a prefix
    for verdicts in decided:
        for i, v in enumerate(verdicts):
            assert v is not (Verdict.BELOW if i in survivors else Verdict.ABOVE), (i, verdicts)


NSGA2 = {"name": "nsga2", "options": {"population": 4}}
RACING = {"fidelity": "racing", "chunk_items": 3, "racing_z": 0.5}


def start_run(tmp_path: Path, config: Path, name: str) -> RunLog:
    cfg = load_config(config)
    return RunLog.create(tmp_path / name, cfg, {str(p): fingerprint(p) for p in cfg.model_folders})


def candidates(run: RunLog) -> list[dict]:
    return [{**r.__dict__, "time": None, "merge_s": 0, "score_s": 0} for r in RunLog.open(run.root).candidates()]


def test_an_nsga2_run_races_its_children_and_scores_its_first_generation_in_full(tmp_path: Path, scored_family,
                                                                                 search_config) -> None:
    config = search_config(tmp_path, scored_family, strategy=NSGA2, scoring=RACING, budget={"max_evals": 17})
    run = start_run(tmp_path, config, "run")
    Search(run, LocalExecutor, quiet=True).run_to_budget()
    records = [r for r in run.candidates() if r.cached_from is None]
    assert all(r.items is None for r in records if r.generation == 0)
    assert any(r.items is not None and r.items < 24 for r in records)  # some children stopped before their last chunk


def test_an_nsga2_racing_run_resumed_from_any_prefix_of_its_log_equals_the_whole_run(tmp_path: Path, scored_family,
                                                                                       search_config) -> None:
    config = search_config(tmp_path, scored_family, strategy=NSGA2, scoring=RACING, budget={"max_evals": 17})
    whole = start_run(tmp_path, config, "whole")
    Search(whole, LocalExecutor, quiet=True).run_to_budget()
    expected = candidates(whole)
    lines = [line for line in (whole.root / "log.jsonl").read_text().splitlines() if '"candidate"' in line]
    for cut in (6, 8, 10, 13):  # mid-generation and at its edge, after stops: the survivors are read back as rivals
        prefix = start_run(tmp_path, config, f"prefix{cut}")
        with open(prefix.root / "log.jsonl", "a") as f:
            f.write("".join(line + "\n" for line in lines[:cut]))
        Search(RunLog.open(prefix.root), LocalExecutor, quiet=True).run_to_budget()
        assert candidates(prefix) == expected, cut


def test_children_stopped_early_fall_on_their_side_of_survival_on_full_scores(tmp_path: Path, scored_family,
                                                                              search_config, monkeypatch) -> None:
    first: dict[int, Verdict] = {}  # a child's position in its generation -> the verdict that stopped it
    verdicts = ParetoRace.verdicts

    def spy(self, members, objectives):
        out = verdicts(self, members, objectives)
        for i, v in enumerate(out):
            if v is not None and members[i] is not None:
                first.setdefault(i, v)
        return out

    monkeypatch.setattr(ParetoRace, "verdicts", spy)
    budget = {"max_evals": 9}  # generation 0 (five start points) and one of four children: the same in both runs
    full = start_run(tmp_path, search_config(tmp_path / "f", scored_family, strategy=NSGA2, budget=budget), "full")
    raced = start_run(tmp_path, search_config(tmp_path / "r", scored_family, strategy=NSGA2, scoring=RACING,
                                              budget=budget), "raced")
    for run in (full, raced):
        Search(run, LocalExecutor, quiet=True).run_to_budget()
    records = full.candidates()
    assert [c.key for c in records] == [c.key for c in raced.candidates()] and len({c.key for c in records}) == 9
    objectives = np.array([c.objectives for c in records])
    pool = nsga2_survival(objectives[:5], 4).tolist() + [5, 6, 7, 8]
    survivors = {pool[i] for i in nsga2_survival(objectives[pool], 4)}
    assert first  # some children were resolved before their last chunk
    for i, verdict in first.items():
        assert (5 + i in survivors) == (verdict is Verdict.ABOVE), (i, verdict, survivors)
