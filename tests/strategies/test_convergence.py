"""Every strategy finds a known optimum (or front) of a synthetic problem, clearly better than random."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.strategies import make_strategy
from evomerge.strategies.operators import non_dominated_sort

from .conftest import OPT, ZDT_TRUE_HYPERVOLUME, drive, hypervolume_2d, quadratic, zdt

# (name, options, budget, tolerance on the best squared distance to the optimum)
SINGLE = [
    ("cmaes", {}, 300, 1e-3),
    ("niches", {}, 600, 2e-2),
    ("nsga2", {}, 400, 1e-2),
    ("optuna", {"sampler": "tpe"}, 150, 1e-2),
    ("optuna", {"sampler": "cmaes"}, 300, 1e-3),
    ("optuna", {"sampler": "nsga2", "population_size": 16}, 500, 2e-2),
]


def best_distance(name: str, options: dict, budget: int, seed: int = 0) -> float:
    s = make_strategy(name, len(OPT), 1, seed=seed, **options)
    return -max(e.objectives[0] for _, e in drive(s, quadratic, budget, lag=4))


@pytest.mark.parametrize("name, options, budget, tol", SINGLE,
                         ids=[f"{n}-{o.get('sampler', '')}" for n, o, _, _ in SINGLE])
def test_finds_the_optimum_of_a_quadratic_and_beats_random(name: str, options: dict, budget: int, tol: float) -> None:
    found = best_distance(name, options, budget)
    baseline = best_distance("random", {}, budget)
    assert found < tol
    assert found < baseline / 3


def front_quality(name: str, options: dict, budget: int, seed: int = 0) -> tuple[float, float]:
    """(hypervolume of everything evaluated / the true front's, mean g − 1 over the found front)."""
    s = make_strategy(name, 5, 2, seed=seed, **options)
    done = drive(s, zdt, budget, lag=4)
    minimized = -np.array([e.objectives for _, e in done])
    xs = np.array([c.x for c, _ in done])
    front = non_dominated_sort(-minimized)[0]
    g_minus_1 = float(np.mean(np.sum((xs[front, 1:] - 0.5) ** 2, axis=1)))
    return hypervolume_2d(minimized) / ZDT_TRUE_HYPERVOLUME, g_minus_1


def test_nsga2_recovers_a_known_two_objective_front() -> None:
    hv, gap = front_quality("nsga2", {}, 800)
    hv_random, gap_random = front_quality("random", {}, 800)
    assert hv > 0.98 and gap < 0.015
    assert hv > hv_random and gap < gap_random / 4


def test_optuna_nsga2_recovers_a_known_two_objective_front() -> None:
    hv, gap = front_quality("optuna", {"sampler": "nsga2", "population_size": 16}, 600)
    hv_random, gap_random = front_quality("random", {}, 600)
    assert hv > 0.96 and gap < 0.025
    assert hv > hv_random and gap < gap_random / 3


def test_optuna_tpe_approaches_a_known_two_objective_front() -> None:
    # multi-objective TPE converges onto the front fast but spreads along it slowly: check closeness
    hv, gap = front_quality("optuna", {"sampler": "tpe"}, 250)
    hv_random, gap_random = front_quality("random", {}, 250)
    assert gap < 0.03 and gap < gap_random / 3
    assert hv > hv_random
