"""Pareto dominance, fronts, crowding and the knee (evomerge.pareto), on hand-made points."""

from __future__ import annotations

import numpy as np

from evomerge import pareto

# maximized objective vectors
POINTS = np.array([[3, 1], [1, 3], [2, 2], [1, 1], [2, 0.5], [0, 0], [3, 1]], dtype=float)


def test_non_dominated_sort_of_a_hand_made_set() -> None:
    # (3,1), (1,3), (2,2) and the duplicate (3,1) are non-dominated; (1,1) and (2,0.5) next; (0,0) last
    assert pareto.non_dominated_sort(POINTS) == [[0, 1, 2, 6], [3, 4], [5]]
    assert list(pareto.pareto_ranks(POINTS)) == [0, 0, 0, 1, 1, 2, 0]


def test_dominates_needs_strictly_better_somewhere() -> None:
    assert pareto.dominates([2, 2], [1, 2]) and not pareto.dominates([2, 2],
                                                                     [2, 2]) and not pareto.dominates([3, 1], [1, 3])


def test_crowding_distance_of_a_hand_made_front() -> None:
    front = np.array([[3, 1], [0, 4], [4, 0], [1, 3.5]], dtype=float)
    # ranges 4 and 4; (1, 3.5): 3/4 + 3/4; (3, 1): 3/4 + 3.5/4; extremes infinite
    assert np.allclose(pareto.crowding_distance(front), [0.75 + 0.875, np.inf, np.inf, 1.5])


def test_crowding_distance_of_two_points_is_infinite() -> None:
    assert np.all(np.isinf(pareto.crowding_distance(np.array([[0.0, 1.0], [1.0, 0.0]]))))


def test_front_keeps_the_non_dominated_items_in_their_order() -> None:
    items = [("a", (0.9, 0.1)), ("b", (0.5, 0.5)), ("c", (0.4, 0.4)), ("d", (0.1, 0.9)), ("e", (0.9, 0.1))]
    assert [name for name, _ in pareto.front(items, lambda item: item[1])] == ["a", "b", "d", "e"]


def test_knee_is_the_member_closest_to_the_utopia_point() -> None:
    front = [(1.0, 0.0), (0.8, 0.7), (0.3, 0.9), (0.0, 1.0)]
    # rescaled to [0, 1] per objective: (1,0) (.8,.7) (.3,.9) (0,1); distance to (1,1): 1, .36, .71, 1
    assert pareto.knee(front, lambda p: p) == (0.8, 0.7)
    # units do not matter: scaling one objective by 100 picks the same member
    assert pareto.knee([(a * 100, b) for a, b in front], lambda p: p) == (80.0, 0.7)
