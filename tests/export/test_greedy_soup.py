"""The greedy soup (Wortsman et al.): a procedure over calibration scores, here over a table of scores."""

from __future__ import annotations

from typing import Sequence

from evomerge.export.baselines import greedy_soup
from evomerge.recipes.fixed import FixedRecipe, soup_of


def run(order: list[int], scores: dict[tuple[int, ...], float]) -> tuple[FixedRecipe, list[tuple[int, ...]]]:
    asked: list[tuple[int, ...]] = []

    def soup(members: Sequence[int]) -> FixedRecipe:
        return soup_of(members, 4)

    def rank(fixed: FixedRecipe) -> tuple[float, float]:
        members = tuple(i for i, w in enumerate(fixed.source_params["weight"]) if w > 0)
        asked.append(members)
        return (scores[members], 0.0)

    return greedy_soup(order, soup, rank), asked


def test_a_source_joins_the_soup_only_where_the_score_does_not_drop() -> None:
    scores = {(2,): 0.6, (1, 2): 0.7, (0, 1, 2): 0.65, (1, 2, 3): 0.7}
    chosen, asked = run([2, 1, 0, 3], scores)
    assert chosen.source_params["weight"] == (0.0, 1 / 3, 1 / 3, 1 / 3)  # 0 lowered it; 3 kept it level
    assert asked == [(2,), (1, 2), (0, 1, 2), (1, 2, 3)]


def test_the_best_source_alone_is_the_soup_when_every_addition_lowers_the_score() -> None:
    chosen, _ = run([3, 0, 1, 2], {(3,): 0.9, (0, 3): 0.5, (1, 3): 0.5, (2, 3): 0.8})
    assert chosen.name == "source3"
