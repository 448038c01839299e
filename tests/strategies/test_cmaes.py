"""CMA-ES: the generation edge, x0, and isolation from numpy's global random state."""

from __future__ import annotations

import numpy as np

from evomerge.strategies import Evaluation, make_strategy
from evomerge.strategies.cmaes import default_popsize

from .conftest import drive, quadratic


def test_default_population_is_4_plus_3_ln_n() -> None:
    assert default_popsize(6) == 9 and default_popsize(100) == 17
    assert make_strategy("cmaes", 6, 1, seed=0).popsize == 9


def test_ask_returns_none_at_the_generation_edge_until_all_members_are_told() -> None:
    s = make_strategy("cmaes", 4, 1, seed=0, popsize=5)
    gen = [s.ask() for _ in range(5)]
    assert all(c is not None and c.generation == 1 and c.operator == "cma" for c in gen)
    assert s.ask() is None
    for c in gen[:4]:
        s.tell(c, quadratic(c.x + (0.5, 0.5)))
        assert s.ask() is None
    s.tell(gen[4], quadratic(gen[4].x + (0.5, 0.5)))
    nxt = s.ask()
    assert nxt is not None and nxt.generation == 2


def test_the_best_initial_point_is_the_search_centre() -> None:
    worse, better = (0.9, 0.9, 0.9, 0.9), (0.1, 0.9, 0.2, 0.8)
    s = make_strategy("cmaes", 4, 1, seed=0, initial=[worse, better], sigma0=1e-3)
    first, second = s.ask(), s.ask()
    assert first.operator == second.operator == "init"
    assert s.ask() is None  # CMA-ES waits for the initial points' results
    s.tell(first, Evaluation((-3.6,)))
    s.tell(second, Evaluation((-2.0,)))
    assert np.allclose(s.ask().x, better, atol=0.01)


def test_a_flat_fitness_restarts_at_the_best_point_with_a_larger_population() -> None:
    s = make_strategy("cmaes", 4, 1, seed=0, popsize=4)
    told = 0
    while s.restarts == 0 and told < 400:
        c = s.ask()
        s.tell(c, Evaluation((1.0,)))  # every candidate ties: cma's flat-fitness criterion fires
        told += 1
    assert s.restarts == 1 and s.es.popsize == 8
    gen = [s.ask() for _ in range(8)]
    assert all(c is not None for c in gen) and s.ask() is None


def test_two_instances_with_one_seed_agree_whatever_else_uses_numpy_global_rng() -> None:
    def evaluate(x):
        return quadratic(tuple(x) + (0.5, 0.5))

    alone = [c.x for c, _ in drive(make_strategy("cmaes", 4, 1, seed=3), evaluate, 40, lag=2)]
    a, b = make_strategy("cmaes", 4, 1, seed=3), make_strategy("cmaes", 4, 1, seed=3)
    xs_a, xs_b = [], []
    for _ in range(40):  # interleaved, with other global-RNG use in between
        for s, xs in ((a, xs_a), (b, xs_b)):
            np.random.seed(len(xs))
            np.random.rand(7)
            c = s.ask()
            xs.append(c.x)
            s.tell(c, evaluate(c.x))
    assert xs_a == xs_b == alone


def test_the_callers_global_numpy_stream_is_left_untouched() -> None:
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    s = make_strategy("cmaes", 4, 1, seed=0)
    c = s.ask()
    s.tell(c, Evaluation((0.0,)))
    assert np.array_equal(np.random.rand(3), expected)


def test_failed_members_are_ranked_last_without_breaking_the_update() -> None:
    s = make_strategy("cmaes", 3, 1, seed=0, popsize=4)
    for _ in range(3):
        gen = [s.ask() for _ in range(4)]
        for i, c in enumerate(gen):
            s.tell(c, Evaluation((float("-inf"),) if i == 0 else (-sum(c.x),), failed=i == 0))
    assert s.es.countiter == 3  # three updates went through
    assert s.es.mean.sum() < 1.5 and np.isfinite(s.es.mean).all()  # and moved toward the optimum x = 0 from 0.5
    assert s.ask() is not None
