"""Partial scores: common item orders, chunks, and estimates checked against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from evomerge.scoring.partial import (
    Objective,
    chunk_bounds,
    fitness,
    item_order,
    mean_estimate,
    n_chunks,
    paired_difference,
    pooled,
)

ACC = Objective("mean", 1.0, 1.0)


def test_item_order_is_a_seeded_permutation_shared_by_every_candidate() -> None:
    order = item_order(10, seed=3, task=0)
    assert sorted(order) == list(range(10))
    assert item_order(10, seed=3, task=0) == order
    assert item_order(10, seed=3, task=1) != order and item_order(10, seed=4, task=0) != order


def test_chunks_advance_every_task_by_the_same_fraction() -> None:
    assert n_chunks([100, 30], 32) == 5  # 130 items in chunks of about 32
    assert chunk_bounds(100, 4) == (0, 25, 50, 75, 100)
    assert chunk_bounds(30, 4) == (0, 8, 15, 23, 30)
    assert chunk_bounds(2, 4) == (0, 1, 1, 2, 2)  # a small task still has an item in the first chunk


def test_mean_estimate_has_the_sample_standard_error() -> None:
    e = mean_estimate([1.0, 0.0, 1.0, 1.0])  # mean 0.75, sample variance 0.25
    assert e.value == 0.75 and e.n == 4
    assert e.se == pytest.approx(math.sqrt(0.25 / 4))
    assert mean_estimate([1.0]).se == math.inf


def test_a_log_likelihood_metric_pools_as_exp_of_minus_the_mean() -> None:
    assert pooled("perplexity", [-1.0, -3.0]) == pytest.approx(math.exp(2.0))
    assert pooled("mean", [0.0, 1.0, 1.0]) == pytest.approx(2 / 3)


def test_paired_difference_uses_the_common_prefix_and_the_differences_variance() -> None:
    a = [[1.0, 1.0, 0.0, 1.0, 1.0]]
    b = [[1.0, 0.0, 0.0, 0.0]]  # common prefix: 4 items, differences 0, 1, 0, 1
    d = paired_difference([ACC], a, b)
    assert d.n == 4 and d.value == pytest.approx(0.75 - 0.25)
    assert d.se == pytest.approx(math.sqrt((1 / 3) / 4))  # sample variance of (0, 1, 0, 1) is 1/3


def test_items_both_candidates_pass_and_fail_alike_add_no_variance() -> None:
    a = [[1.0, 0.0, 1.0, 0.0]]
    d = paired_difference([ACC], a, a)
    assert d.value == 0.0 and d.se == 0.0


def test_paired_difference_is_weighted_and_oriented_through_each_objectives_pooling() -> None:
    ppl = Objective("perplexity", -1.0, 0.5)  # lower perplexity is better
    acc = Objective("mean", 1.0, 0.5)
    a = [[-1.0, -1.0], [1.0, 1.0]]
    b = [[-2.0, -2.0], [1.0, 0.0]]
    d = paired_difference([ppl, acc], a, b)
    assert d.value == pytest.approx(0.5 * (-math.e + math.exp(2.0)) + 0.5 * 0.5)
    # ppl differences (1, 1) have no variance; acc differences (0, 1): variance 1/2, s.e. sqrt(1/4)
    assert d.se == pytest.approx(0.5 * 0.5)
    assert fitness([ppl, acc], a) - fitness([ppl, acc], b) == pytest.approx(d.value)


def test_confidence_bounds_at_z() -> None:
    d = paired_difference([ACC], [[1.0, 1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]])  # diffs 1,1,0,0: 0.5 ± 0.2887
    assert d.above(1.5) and not d.above(2.0) and not d.below(1.5)


def test_a_normalized_objective_is_the_ratio_to_its_reference_in_the_better_direction() -> None:
    """What the export's grids race on: value / reference when higher is better, reference / value when lower is,
    with the standard error carried through the ratio's slope."""
    acc = Objective("mean", 1.0, 1.0, reference=0.5)
    assert acc.value([1.0, 0.0, 1.0, 1.0]) == pytest.approx(0.75 / 0.5)
    d = paired_difference([acc], [[1.0, 1.0, 1.0, 0.0]], [[0.0, 0.0, 1.0, 0.0]])
    assert d.value == pytest.approx(0.5 / 0.5) and d.se == pytest.approx(math.sqrt(1 / 12) / 0.5)
    ppl = Objective("perplexity", -1.0, 1.0, reference=math.e)
    assert ppl.value([-1.0, -1.0]) == pytest.approx(1.0) and ppl.value([-2.0,
                                                                        -2.0]) == pytest.approx(math.e / math.e ** 2)
