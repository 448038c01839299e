"""Pareto front and knee on hand-made records; normalization against the best source."""

from __future__ import annotations

import math

from evomerge.export.front import knee, pareto_front
from evomerge.export.scores import Normalizer


def rec(index: int, objectives: list[float], *, key: str | None = None, error: str | None = None, cached_from: int | None = None) -> dict:
    return {"index": index, "key": key or f"k{index}", "objectives": objectives, "error": error, "cached_from": cached_from}


def test_front_keeps_exactly_the_non_dominated_successful_candidates() -> None:
    records = [
        rec(0, [0.9, 0.1]),
        rec(1, [0.5, 0.5]),
        rec(2, [0.4, 0.4]),  # dominated by 1
        rec(3, [0.1, 0.9]),
        rec(4, [0.5, 0.5], key="k1", cached_from=1),  # the same genome again: one point
        rec(5, [2.0, 2.0], error="boom"),  # failed: never on the front
        rec(6, [0.5, 0.3]),  # dominated by 1 (ties on the first objective)
        rec(7, [0.9, 0.1], key="k7"),  # equal to 0 but another genome: neither dominates
    ]
    assert [r["index"] for r in pareto_front(records)] == [0, 1, 3, 7]


def test_knee_is_the_member_closest_to_the_utopia_point() -> None:
    front = [rec(0, [1.0, 0.0]), rec(1, [0.8, 0.7]), rec(2, [0.3, 0.9]), rec(3, [0.0, 1.0])]
    # rescaled to [0, 1] per objective: (1,0) (.8,.7) (.3,.9) (0,1); distance to (1,1): 1, .36, .71, 1
    assert knee(front)["index"] == 1
    # units do not matter: scaling one objective by 100 picks the same member
    scaled = [rec(r["index"], [r["objectives"][0] * 100, r["objectives"][1]]) for r in front]
    assert knee(scaled)["index"] == 1


def test_normalized_score_is_relative_to_the_best_source_on_that_task() -> None:
    norm = Normalizer.from_sources([True, False], {"heldout": [(0.8, 4.0), (0.4, 2.0), None]})
    assert norm.reference["heldout"] == (0.8, 2.0)  # best source per objective: max acc, min loss
    assert norm.normalize((0.4, 4.0), "heldout") == (0.5, 0.5)
    assert norm.normalize((0.8, 2.0), "heldout") == (1.0, 1.0)  # as good as the best expert
    assert norm.mean((1.2, 1.0), "heldout") == (1.5 + 2.0) / 2
    # a reference of 0 cannot be divided by: that objective is skipped in the mean
    zero = Normalizer.from_sources([True, True], {"heldout": [(0.0, 0.5)]})
    assert math.isnan(zero.normalize((0.3, 0.25), "heldout")[0])
    assert zero.mean((0.3, 0.25), "heldout") == 0.5
