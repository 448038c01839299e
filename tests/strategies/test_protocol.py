"""The ask/tell protocol every strategy keeps: registry, options, seeds, bounds, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.errors import EvomergeError
from evomerge.strategies import Candidate, Evaluation, make_strategy, strategy_names, strategy_options

from .conftest import drive, quadratic, zdt

# every strategy configuration the tests exercise: (name, n_objectives, options)
CONFIGS = [
    ("random", 1, {}),
    ("cmaes", 1, {}),
    ("niches", 1, {}),
    ("niches", 1, {"mix": "slerp", "alpha": 0.0, "use_attraction": False}),
    ("nsga2", 2, {"population": 8}),
    ("nsga2", 2, {"population": 8, "mutation": "gaussian"}),
    ("optuna", 1, {"sampler": "tpe", "n_startup_trials": 5}),
    ("optuna", 2, {"sampler": "tpe", "n_startup_trials": 5}),
    ("optuna", 2, {"sampler": "nsga2", "population_size": 8}),
    ("optuna", 2, {"sampler": "cmaes"}),
]
IDS = [f"{n}-{k}obj-" + "-".join(f"{a}={b}" for a, b in o.items()) for n, k, o in CONFIGS]
DIM = 6


def evaluate_for(n_objectives: int):
    if n_objectives == 1:
        return quadratic

    def both(x):  # two objectives plus the quadratic's per-item scores (for niches)
        return Evaluation(zdt(x).objectives, per_item=quadratic(x).per_item)

    return both


def run(name: str, n_obj: int, options: dict, seed: int, budget: int = 30, lag: int = 3, initial=()) -> list[Candidate]:
    s = make_strategy(name, DIM, n_obj, seed=seed, initial=initial, **options)
    return [c for c, _ in drive(s, evaluate_for(n_obj), budget, lag)]


def test_registry_names() -> None:
    assert strategy_names() == ["cmaes", "niches", "nsga2", "optuna", "random"]


def test_unknown_strategy_names_the_valid_ones() -> None:
    with pytest.raises(EvomergeError, match="unknown strategy 'hillclimb'.*cmaes, niches, nsga2, optuna, random"):
        make_strategy("hillclimb", 4, 1, seed=0)


def test_unknown_option_names_the_valid_ones() -> None:
    with pytest.raises(EvomergeError, match=r"unknown field 'sigma' in config section 'strategy\.options' \(allowed: "
                       r"sigma0, popsize, restart_popsize_factor\)"):
        make_strategy("cmaes", 4, 1, seed=0, sigma=0.3)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("cmaes", {"sigma0": -1.0}, "sigma0"),
        ("cmaes", {"popsize": "ten"}, "popsize.*integer"),
        ("niches", {"mix": "cubic"}, "mix"),
        ("niches", {"use_attraction": "yes"}, "use_attraction.*true or false"),
        ("nsga2", {"mutation": "flip"}, "mutation"),
        ("optuna", {"sampler": "grid"}, "sampler.*tpe, nsga2, cmaes"),
    ],
)
def test_bad_option_values_are_user_errors(name: str, options: dict, match: str) -> None:
    with pytest.raises(EvomergeError, match=match):
        make_strategy(name, 4, 1, seed=0, **options)


def test_options_are_listed_with_defaults() -> None:
    assert strategy_options("cmaes") == {"sigma0": 1 / 6, "popsize": None, "restart_popsize_factor": 2.0}
    assert strategy_options("niches")["archive_size"] == 20 and strategy_options("nsga2")["population"] == 16
    assert strategy_options("optuna")["sampler"] == "tpe"


def test_integer_values_are_accepted_for_float_options() -> None:
    s = make_strategy("cmaes", 4, 1, seed=0, sigma0=1)
    assert s.options.sigma0 == 1.0 and isinstance(s.options.sigma0, float)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial": [[0.5, 0.5]]}, "initial point 0 has 2 values"),
        ({"initial": [[0.5, 0.5, 0.5, 1.5]]}, "outside the unit box"),
        ({"weights": [1.0]}, "weights"),
        ({"weights": [1.0, -1.0]}, "weights"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_common_arguments_are_user_errors(kwargs: dict, match: str) -> None:
    args = {"seed": 0, **kwargs}
    with pytest.raises(EvomergeError, match=match):
        make_strategy("random", 4, 2, **args)


@pytest.mark.parametrize("name, n_obj, options", CONFIGS, ids=IDS)
def test_initial_points_are_asked_first(name: str, n_obj: int, options: dict) -> None:
    initial = [tuple([0.25] * DIM), tuple(np.linspace(0.0, 1.0, DIM))]
    cands = run(name, n_obj, options, seed=0, budget=5, initial=initial)
    assert [c.x for c in cands[:2]] == initial
    assert all(c.operator == "init" and c.generation == 0 for c in cands[:2])
    assert all(c.operator != "init" for c in cands[2:])


@pytest.mark.parametrize("name, n_obj, options", CONFIGS, ids=IDS)
def test_candidates_lie_in_the_box_as_plain_floats(name: str, n_obj: int, options: dict) -> None:
    for c in run(name, n_obj, options, seed=1):
        assert len(c.x) == DIM and all(type(v) is float and 0.0 <= v <= 1.0 for v in c.x)


@pytest.mark.parametrize("name, n_obj, options", CONFIGS, ids=IDS)
def test_same_seed_and_tells_give_the_same_candidates(name: str, n_obj: int, options: dict) -> None:
    assert run(name, n_obj, options, seed=5) == run(name, n_obj, options, seed=5)


@pytest.mark.parametrize("name, n_obj, options", CONFIGS, ids=IDS)
def test_different_seeds_give_different_candidates(name: str, n_obj: int, options: dict) -> None:
    a, b = run(name, n_obj, options, seed=5), run(name, n_obj, options, seed=6)
    assert [c.x for c in a] != [c.x for c in b]


@pytest.mark.parametrize("name, n_obj, options", CONFIGS, ids=IDS)
def test_generations_never_decrease_in_ask_order(name: str, n_obj: int, options: dict) -> None:
    gens = [c.generation for c in run(name, n_obj, options, seed=2)]
    assert gens == sorted(gens) and gens[-1] >= 1


@pytest.mark.parametrize("name, n_obj, options", CONFIGS, ids=IDS)
def test_parents_are_earlier_candidates(name: str, n_obj: int, options: dict) -> None:
    for i, c in enumerate(run(name, n_obj, options, seed=3)):
        assert all(0 <= p < i for p in c.parents)


@pytest.mark.parametrize("name, n_obj, options", CONFIGS, ids=IDS)
def test_a_failed_candidate_is_accepted(name: str, n_obj: int, options: dict) -> None:
    s = make_strategy(name, DIM, n_obj, seed=0, **options)
    evaluate = evaluate_for(n_obj)

    def sometimes_failing(x):
        if x[0] < 0.3:
            return Evaluation(tuple([-1e6] * n_obj), per_item=tuple([0.0] * 36), failed=True)
        return evaluate(x)

    assert len(drive(s, sometimes_failing, 40, lag=2)) == 40


def test_tell_out_of_ask_order_is_refused() -> None:
    s = make_strategy("random", 3, 1, seed=0)
    s.ask()
    second = s.ask()
    with pytest.raises(RuntimeError, match="out of ask order"):
        s.tell(second, Evaluation((0.0,)))


def test_tell_without_a_pending_candidate_is_refused() -> None:
    s = make_strategy("random", 3, 1, seed=0)
    with pytest.raises(RuntimeError, match="no candidate is pending"):
        s.tell(Candidate(x=(0.5, 0.5, 0.5)), Evaluation((0.0,)))


def test_weights_scalarize_as_a_weighted_mean() -> None:
    s = make_strategy("random", 3, 2, seed=0, weights=[3, 1])
    assert s.scalarize(Evaluation((1.0, 5.0))) == pytest.approx(0.75 * 1.0 + 0.25 * 5.0)
    assert make_strategy("random", 3, 2, seed=0).scalarize(Evaluation((1.0, 5.0))) == pytest.approx(3.0)
