"""optuna: the study behind ask/tell, its SQLite storage, failures, multi-objective studies."""

from __future__ import annotations

import optuna
import pytest

from evomerge.strategies import Evaluation, make_strategy

from .conftest import drive, quadratic, zdt


def test_the_study_is_stored_in_sqlite_where_optuna_can_read_it(tmp_path) -> None:
    db = tmp_path / "optuna.db"
    s = make_strategy("optuna", 6, 1, seed=0, storage=f"sqlite:///{db}", initial=[(0.5,) * 6], n_startup_trials=4)
    done = drive(s, quadratic, 8, lag=3)
    study = optuna.load_study(study_name="evomerge", storage=f"sqlite:///{db}")
    assert len(study.trials) == 8
    assert study.trials[0].params == {f"x{i:04d}": 0.5 for i in range(6)}
    assert study.best_value == max(e.objectives[0] for _, e in done)
    # the storage does not change what is asked
    memory = make_strategy("optuna", 6, 1, seed=0, initial=[(0.5,) * 6], n_startup_trials=4)
    assert [c.x for c, _ in drive(memory, quadratic, 8, lag=3)] == [c.x for c, _ in done]


def test_a_failed_candidate_is_a_failed_trial() -> None:
    s = make_strategy("optuna", 3, 1, seed=0)
    c = s.ask()
    s.tell(c, Evaluation((-1e6,), failed=True))
    assert s.study.trials[0].state == optuna.trial.TrialState.FAIL


@pytest.mark.parametrize("sampler, directions", [("tpe", 2), ("nsga2", 2), ("cmaes", 1)])
def test_multi_objective_studies_except_for_cmaes(sampler: str, directions: int) -> None:
    s = make_strategy("optuna", 3, 2, seed=0, sampler=sampler)
    drive(s, zdt, 3, lag=1)
    assert len(s.study.directions) == directions
    assert all(d == optuna.study.StudyDirection.MAXIMIZE for d in s.study.directions)


def test_tpe_keeps_proposing_while_trials_are_running() -> None:
    s = make_strategy("optuna", 3, 1, seed=0, n_startup_trials=2)
    first = [s.ask() for _ in range(2)]
    for c in first:
        s.tell(c, quadratic(c.x + (0.5,) * 3))
    running = [s.ask() for _ in range(6)]  # constant liar: none of these is told yet
    assert all(c is not None for c in running) and len({c.x for c in running}) == 6
