"""NSGA-II: generations, elitism, the generation edge."""

from __future__ import annotations

from evomerge.strategies import make_strategy

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


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Higher is better: a is nowhere worse than b and somewhere better."""
    return all(p >= q for p, q in zip(a, b, strict=True)) and any(p > q for p, q in zip(a, b, strict=True))


def non_dominated(rows: list[tuple[float, ...]]) -> set[int]:
    """Indices of the rows no other row dominates, by comparing every pair (independent of ``non_dominated_sort``)."""
    return {i for i, a in enumerate(rows) if not any(dominates(b, a) for b in rows)}


def test_survival_keeps_the_front_of_everything_told() -> None:
    s = make_strategy("nsga2", 3, 2, seed=0, population=6)
    done = drive(s, zdt, 36, lag=1)  # six generations told
    s.ask()  # the next generation: survival over the population and the last generation
    front = non_dominated([e.objectives for _, e in done])
    kept = {m[0] for m in s.population}
    assert len(kept) == 6
    assert front <= kept if len(front) <= 6 else kept <= front


def test_front_lists_the_non_dominated_survivors() -> None:
    s = make_strategy("nsga2", 3, 2, seed=0, population=8)
    drive(s, zdt, 24, lag=1)
    s.ask()
    members = {index: (tuple(map(float, x)), tuple(map(float, f))) for index, x, f in s.population}
    indices = list(members)
    want = {indices[i] for i in non_dominated([members[i][1] for i in indices])}
    assert 0 < len(want) < len(members)  # survivors on both sides of the front
    front = s.front()
    assert {index for index, _, _ in front} == want
    assert all(members[index] == (x, f) for index, x, f in front)


def test_children_race_against_survival_with_the_survivors_and_the_first_generation_does_not() -> None:
    s = make_strategy("nsga2", 3, 2, seed=0, population=4, initial=[(0.5, 0.5, 0.5)])
    first = [s.ask() for _ in range(4)]
    assert all(s.selection(c) is None for c in first)  # scored in full: the initial points and random fill
    for c in first:
        s.tell(c, zdt(c.x))
    child = s.ask()
    sel = s.selection(child)
    assert (sel.generation, sel.size, sel.keep, sel.rule) == (1, 4, 4, "pareto")
    assert sel.rivals == tuple(m[0] for m in s.population) and len(sel.rivals) == 4
