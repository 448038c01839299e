"""Natural niches (M2N2): the archive update, the steady-state protocol, and per-item signal paying off."""

from __future__ import annotations

import numpy as np
import pytest

from evomerge.errors import EvomergeError
from evomerge.strategies import Evaluation, make_strategy

from .conftest import drive


def told(s, x_items: list[tuple[tuple[float, ...], tuple[float, ...]]]) -> None:
    for x, items in x_items:
        c = s.ask()
        assert c.x == x
        s.tell(c, Evaluation((float(np.mean(items)),), per_item=items))


def test_seeds_enter_the_archive_through_the_normal_update() -> None:
    seeds = [(0.1, 0.1), (0.9, 0.9), (0.5, 0.5)]
    s = make_strategy("niches", 2, 1, seed=0, initial=seeds, archive_size=4)
    told(s, [(seeds[0], (1.0, 0.0)), (seeds[1], (0.0, 1.0)), (seeds[2], (0.0, 0.0))])
    # the all-zero third seed ties the zero rows and replaces the first of them
    assert [m[0] for m in s.members()] == [0, 1, 2]
    assert s.archive_index.tolist() == [0, 1, 2, -1]


def test_a_child_tying_the_worst_member_replaces_it() -> None:
    seeds = [(0.1,), (0.9,)]
    s = make_strategy("niches", 1, 1, seed=0, initial=seeds, archive_size=2)
    told(s, [(seeds[0], (1.0, 0.0)), (seeds[1], (0.0, 1.0))])
    child = s.ask()
    s.tell(child, Evaluation((0.5,), per_item=(1.0, 0.0)))  # fitness ties seed 0 (loads 2, 1): 0.5 vs 0.5
    assert s.archive_index.tolist() == [2, 1]


def test_a_child_worse_than_every_member_stays_out() -> None:
    seeds = [(0.1,), (0.9,)]
    s = make_strategy("niches", 1, 1, seed=0, initial=seeds, archive_size=2)
    told(s, [(seeds[0], (1.0, 1.0, 0.0)), (seeds[1], (0.0, 0.0, 1.0))])
    child = s.ask()
    s.tell(child, Evaluation((0.0,), per_item=(0.0, 0.0, 0.0)))
    assert s.archive_index.tolist() == [0, 1]


def test_a_failed_child_never_enters() -> None:
    seeds = [(0.1,), (0.9,)]
    s = make_strategy("niches", 1, 1, seed=0, initial=seeds, archive_size=3)
    told(s, [(seeds[0], (1.0, 0.0)), (seeds[1], (0.0, 1.0))])
    child = s.ask()
    s.tell(child, Evaluation((-1e6,), per_item=(0.0, 0.0), failed=True))
    assert s.archive_index.tolist() == [0, 1, -1]


def test_waits_only_until_the_seeds_are_told_then_never() -> None:
    seeds = [(0.2, 0.2), (0.8, 0.8)]
    s = make_strategy("niches", 2, 1, seed=0, initial=seeds)
    a, b = s.ask(), s.ask()
    assert s.ask() is None
    s.tell(a, Evaluation((1.0,), per_item=(1.0, 0.0)))
    assert s.ask() is None
    s.tell(b, Evaluation((1.0,), per_item=(0.0, 1.0)))
    children = [s.ask() for _ in range(50)]  # nothing told: still breeds from the archive
    assert all(c is not None and set(c.parents) <= {0, 1} for c in children)


def test_children_of_two_seeds_with_linear_mixing_stay_between_them_without_mutation() -> None:
    seeds = [(0.2, 0.3, 0.4), (0.6, 0.9, 0.5)]
    s = make_strategy("niches", 3, 1, seed=0, initial=seeds, mutation_sigma=0.0)
    told(s, [(seeds[0], (1.0, 0.0)), (seeds[1], (0.0, 1.0))])
    lo, hi = np.min(seeds, axis=0), np.max(seeds, axis=0)
    for _ in range(30):
        c = s.ask()
        assert c.operator == "crossover" and np.all(np.asarray(c.x) >= lo - 1e-12) and np.all(np.asarray(c.x) <= hi
                                                                                              + 1e-12)
        s.tell(c, Evaluation((0.0,), per_item=(0.0, 0.0)))


def test_attraction_pairs_complementary_parents() -> None:
    # member 0 solves items 0-1, member 1 items 2-3, member 2 items 0-1 as well: with attraction, every
    # pair crosses the two niches; without it, same-niche pairs happen
    seeds = [(0.1, 0.1), (0.9, 0.9), (0.2, 0.2)]
    items = [(1.0, 1.0, 0.0, 0.0), (0.0, 0.0, 1.0, 1.0), (1.0, 1.0, 0.0, 0.0)]

    def pairs(use_attraction: bool) -> set[frozenset[int]]:
        s = make_strategy("niches", 2, 1, seed=0, initial=seeds, use_attraction=use_attraction)
        told(s, list(zip(seeds, items, strict=True)))
        return {frozenset(s.ask().parents) for _ in range(60)}

    assert all(1 in p for p in pairs(True))
    assert any(1 not in p for p in pairs(False))


def test_without_initial_points_it_starts_from_random_points() -> None:
    s = make_strategy("niches", 3, 1, seed=0, archive_size=5)
    first = [s.ask() for _ in range(5)]
    assert all(c.operator == "random" for c in first) and s.ask() is None


def test_needs_per_item_scores() -> None:
    s = make_strategy("niches", 2, 1, seed=0, initial=[(0.5, 0.5)])
    c = s.ask()
    with pytest.raises(EvomergeError, match="per-item"):
        s.tell(c, Evaluation((1.0,)))


# --- per-item signal: M2N2 against the plain GA (alpha 0, no attraction) ------------------------


def skills_problem(seed: int, n_skills: int = 4, block: int = 2, items: int = 10):
    """Skill s is a block of genes; its items are solved when the block is within item-specific radii of
    the skill's target. Each seed point is a specialist: one block on target, the others far off."""
    rng = np.random.default_rng(1000 + seed)
    targets = rng.uniform(0.2, 0.8, (n_skills, block))
    radii = np.linspace(0.03, 0.25, items)

    def evaluate(x):
        d = np.linalg.norm(np.asarray(x).reshape(n_skills, block) - targets, axis=1)
        solved = (d[:, None] < radii[None, :]).astype(float).ravel()
        return Evaluation((float(solved.mean()),), per_item=tuple(solved))

    far = np.where(targets > 0.5, targets - 0.35, targets + 0.35)
    seeds = []
    for s in range(n_skills):
        x = far.copy()
        x[s] = targets[s]
        seeds.append(tuple(float(v) for v in x.ravel()))
    return n_skills * block, evaluate, seeds


def best_solved(seed: int, budget: int, **options) -> float:
    dim, evaluate, seeds = skills_problem(seed)
    s = make_strategy("niches", dim, 1, seed=seed, initial=seeds, **options)
    return max(e.objectives[0] for _, e in drive(s, evaluate, budget, lag=4))


def test_natural_niches_beats_the_plain_ga_when_skills_must_be_combined() -> None:
    seeds, budget = range(6), 600
    m2n2 = np.mean([best_solved(s, budget) for s in seeds])
    ga = np.mean([best_solved(s, budget, alpha=0.0, use_attraction=False) for s in seeds])
    assert m2n2 > ga + 0.1, (m2n2, ga)
