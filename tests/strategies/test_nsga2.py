"""NSGA-II: generations, elitism, the generation edge."""

from __future__ import annotations

import numpy as np

from evomerge.strategies import make_strategy
from evomerge.strategies.operators import non_dominated_sort

from .conftest import drive, zdt


def test_first_generation_is_the_initial_points_filled_up_with_random_ones() -> None:
    s = make_strategy("nsga2", 3, 2, seed=0, population=4, initial=[(0.5, 0.5, 0.5)])
    first = [s.ask() for _ in range(4)]
    assert [c.operator for c in first] == ["init", "random", "random", "random"]
    assert s.ask() is None


def test_ask_returns_none_at_the_generation_edge_until_all_members_are_told() -> None:
    s = make_strategy("nsga2", 3, 2, seed=0, population=4)
    gen = [s.ask() for _ in range(4)]
    for c in gen[:3]:
        s.tell(c, zdt(c.x))
        assert s.ask() is None
    s.tell(gen[3], zdt(gen[3].x))
    child = s.ask()
    assert child.generation == 1 and len(child.parents) == 2 and child.operator.endswith("+mutation")


def test_survival_keeps_the_front_of_everything_told() -> None:
    s = make_strategy("nsga2", 3, 2, seed=0, population=6)
    done = drive(s, zdt, 36, lag=1)  # six generations told
    s.ask()  # the next generation: survival over the population and the last generation
    front = set(non_dominated_sort(np.array([e.objectives for _, e in done]))[0])
    kept = {m[0] for m in s.population}
    assert len(kept) == 6
    assert front <= kept if len(front) <= 6 else kept <= front


def test_front_lists_the_non_dominated_survivors() -> None:
    s = make_strategy("nsga2", 3, 2, seed=0, population=4)
    drive(s, zdt, 8, lag=1)
    s.ask()
    front = s.front()
    assert front and all(len(x) == 3 and len(f) == 2 for _, x, f in front)
