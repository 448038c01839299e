"""Operators: pure functions over arrays, checked on shapes, bounds and small hand-computed cases."""

from __future__ import annotations

import random

import numpy as np
import pytest

from evomerge.strategies import operators as ops


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


A = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
B = np.array([0.9, 0.8, 0.7, 0.6, 0.5])


# --- crossover ---------------------------------------------------------------------------------


def test_uniform_crossover_takes_every_gene_from_one_parent_and_the_other_from_the_other() -> None:
    c1, c2 = ops.uniform_crossover(rng(), A, B)
    assert c1.shape == c2.shape == A.shape
    assert np.all((c1 == A) | (c1 == B))
    assert np.allclose(c1 + c2, A + B)


def test_uniform_crossover_without_swaps_copies_the_parents() -> None:
    c1, c2 = ops.uniform_crossover(rng(), A, B, swap_prob=0.0)
    assert np.array_equal(c1, A) and np.array_equal(c2, B)


def test_blend_crossover_stays_in_the_widened_parent_interval_and_the_box() -> None:
    a, b = np.array([0.0, 0.4, 0.95]), np.array([0.2, 0.6, 1.0])
    for seed in range(50):
        c = ops.blend_crossover(rng(seed), a, b, alpha=0.5)
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        d = hi - lo
        assert np.all(c >= np.maximum(lo - 0.5 * d, 0.0)) and np.all(c <= np.minimum(hi + 0.5 * d, 1.0))


def test_blend_crossover_with_alpha_zero_stays_between_the_parents() -> None:
    c = ops.blend_crossover(rng(), A, B, alpha=0.0)
    assert np.all(c >= np.minimum(A, B)) and np.all(c <= np.maximum(A, B))


def test_sbx_keeps_children_in_the_box() -> None:
    a, b = np.array([0.0, 0.01, 0.5, 0.99]), np.array([1.0, 0.02, 0.6, 1.0])
    for seed in range(100):
        for c in ops.sbx_crossover(rng(seed), a, b, eta=2.0, gene_prob=1.0):
            assert c.shape == a.shape and np.all(c >= 0.0) and np.all(c <= 1.0)


def test_sbx_copies_genes_where_the_parents_agree() -> None:
    c1, c2 = ops.sbx_crossover(rng(), A, A, gene_prob=1.0)
    assert np.array_equal(c1, A) and np.array_equal(c2, A)


def test_sbx_with_large_eta_keeps_children_near_their_parents() -> None:
    c1, c2 = ops.sbx_crossover(rng(), A, B, eta=1e4, gene_prob=1.0)
    # each child gene lies near one of the two parents' genes
    near = np.minimum(np.abs(c1 - A), np.abs(c1 - B))
    assert np.all(near < 1e-2)


def test_slerp_ends_are_the_inputs() -> None:
    a, b = np.array([1.0, 0.0, 0.0]), np.array([0.0, 2.0, 0.0])
    assert np.allclose(ops.slerp(0.0, a, b), a)
    assert np.allclose(ops.slerp(1.0, a, b), b)


def test_slerp_between_orthogonal_unit_vectors_stays_on_the_circle() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    mid = ops.slerp(0.5, a, b)
    assert np.allclose(mid, [np.sqrt(0.5), np.sqrt(0.5)])


def test_slerp_of_colinear_vectors_falls_back_to_linear() -> None:
    a, b = np.array([1.0, 1.0]), np.array([2.0, 2.0])
    assert np.allclose(ops.slerp(0.25, a, b), 0.75 * a + 0.25 * b)


def test_slerp_about_an_origin_rotates_around_that_point() -> None:
    o = 0.5
    a, b = np.array([1.0, 0.5]), np.array([0.5, 1.0])  # orthogonal unit vectors about (0.5, 0.5)
    assert np.allclose(ops.slerp(0.5, a, b, origin=o), [0.5 + np.sqrt(0.125), 0.5 + np.sqrt(0.125)])


def test_split_point_crossover_with_mix_one_returns_a_before_the_split_and_b_after() -> None:
    c = ops.split_point_crossover(A, B, split=2, mix=1.0)
    assert np.allclose(c, [*A[:2], *B[2:]])


def test_split_point_crossover_with_mix_zero_returns_b_before_the_split_and_a_after() -> None:
    c = ops.split_point_crossover(A, B, split=3, mix=0.0)
    assert np.allclose(c, [*B[:3], *A[3:]])


def test_split_point_crossover_mixes_linearly_on_each_side() -> None:
    c = ops.split_point_crossover(A, B, split=1, mix=0.25)
    assert np.allclose(c[:1], 0.25 * A[:1] + 0.75 * B[:1])
    assert np.allclose(c[1:], 0.75 * A[1:] + 0.25 * B[1:])


def test_split_point_crossover_at_zero_applies_the_after_rule_everywhere() -> None:
    assert np.allclose(ops.split_point_crossover(A, B, split=0, mix=1.0), B)


def test_slerp_split_point_crossover_uses_one_angle_from_the_whole_vectors() -> None:
    a, b = np.array([1.0, 0.0, 1.0, 0.0]), np.array([0.0, 1.0, 0.0, 1.0])
    assert np.allclose(ops.split_point_crossover(a, b, split=2, mix=1.0, method="slerp"), [1.0, 0.0, 0.0, 1.0])
    half = ops.split_point_crossover(a, b, split=2, mix=0.5, method="slerp")
    assert np.allclose(half, ops.slerp(0.5, a, b))  # same ratio on both sides: plain SLERP of the vectors


def test_draw_split_is_a_gene_index_and_a_unit_mix() -> None:
    draws = [ops.draw_split(rng(s), 7) for s in range(200)]
    assert {s for s, _ in draws} == set(range(7))
    assert all(0.0 <= m < 1.0 for _, m in draws)


# --- mutation ----------------------------------------------------------------------------------


def test_gaussian_mutation_keeps_the_box() -> None:
    x = np.array([0.0, 1.0, 0.5, 0.001])
    for seed in range(20):
        y = ops.gaussian_mutation(rng(seed), x, sigma=0.5)
        assert y.shape == x.shape and np.all(y >= 0.0) and np.all(y <= 1.0)


def test_gaussian_mutation_with_rate_zero_or_sigma_zero_changes_nothing() -> None:
    assert np.array_equal(ops.gaussian_mutation(rng(), A, sigma=0.1, rate=0.0), A)
    assert np.array_equal(ops.gaussian_mutation(rng(), A, sigma=0.0), A)


def test_gaussian_mutation_has_the_requested_spread() -> None:
    x = np.full(20000, 0.5)
    y = ops.gaussian_mutation(rng(), x, sigma=0.05, rate=0.5)
    changed = y != x
    assert abs(changed.mean() - 0.5) < 0.02
    assert abs(np.std(y[changed] - 0.5) - 0.05) < 0.003


def test_polynomial_mutation_keeps_the_box_and_mutates_at_the_rate() -> None:
    x = np.array([0.0, 1.0, 0.5, 0.999, 0.3])
    y = ops.polynomial_mutation(rng(), x, eta=1.0, rate=1.0)
    assert np.all(y >= 0.0) and np.all(y <= 1.0) and np.sum(y != x) >= 4
    assert np.array_equal(ops.polynomial_mutation(rng(), x, rate=0.0), x)


# --- selection ---------------------------------------------------------------------------------


def test_tournament_favours_quality() -> None:
    winners = ops.tournament(rng(), [0.0, 1.0, 2.0, 3.0], n=4000, size=2)
    counts = np.bincount(winners, minlength=4) / 4000
    # P(win) = ((i+1)² − i²)/16 for i = 0..3: 1/16, 3/16, 5/16, 7/16
    assert np.allclose(counts, [1 / 16, 3 / 16, 5 / 16, 7 / 16], atol=0.025)


def test_truncation_keeps_the_best_with_ties_in_index_order() -> None:
    assert list(ops.truncation([0.5, 0.9, 0.1, 0.9, 0.3], 3)) == [1, 3, 0]


# maximized objective vectors
POINTS = np.array([[3, 1], [1, 3], [2, 2], [1, 1], [2, 0.5], [0, 0], [3, 1]], dtype=float)


def test_nsga2_survival_fills_whole_fronts_then_cuts_by_crowding() -> None:
    assert list(ops.nsga2_survival(POINTS, 4)) == [0, 1, 2, 6]
    assert list(ops.nsga2_survival(POINTS, 6)) == [0, 1, 2, 6, 3, 4]
    five = list(ops.nsga2_survival(POINTS, 5))
    assert five[:4] == [0, 1, 2, 6] and five[4] in (3, 4)


def test_nsga2_survival_prefers_the_spread_out_members_of_the_last_front() -> None:
    f = np.array([[0, 4], [1, 3.9], [2, 2], [4, 0]], dtype=float)  # one front; (1, 3.9) is crowded
    assert sorted(ops.nsga2_survival(f, 3)) == [0, 2, 3]


def test_crowded_quality_orders_by_rank_then_crowding() -> None:
    q = ops.crowded_quality(POINTS)
    assert q[5] < min(q[3], q[4]) and max(q[3], q[4]) < min(q[0], q[1], q[2], q[6])
    assert q[2] < q[1]  # (2,2) sits between others of front 0; (1,3) is an extreme (infinite crowding)


# natural niches on a 3 × 4 score matrix computed by hand:
#   s = [[1,1,0,0], [1,0,1,0], [0,0,1,1]], loads z = [2, 1, 2, 1]
#   s/z = [[.5,1,0,0], [.5,0,.5,0], [0,0,.5,1]]
S = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=float)


def test_niche_fitness_divides_each_item_by_its_load() -> None:
    assert np.allclose(ops.loads(S), [2, 1, 2, 1])
    assert np.allclose(ops.niche_fitness(S, alpha=1.0), [1.5, 1.0, 1.5])


def test_niche_fitness_with_alpha_zero_is_the_plain_score() -> None:
    assert np.allclose(ops.niche_fitness(S, alpha=0.0), [2, 2, 2])


def test_unsolved_items_have_load_one() -> None:
    s = np.array([[1.0, 0.0], [0.0, 0.0]])
    assert np.allclose(ops.loads(s), [1.0, 1.0]) and np.allclose(ops.niche_fitness(s), [1.0, 0.0])


def test_attraction_measures_where_b_beats_a() -> None:
    # A = 1: row 0 adds item 1 (1.0); row 2 adds item 3 (1.0); A itself 0
    assert np.allclose(ops.attraction(S, 1), [1.0, 0.0, 1.0])
    # A = 0: row 1 adds .5 on item 2; row 2 adds .5 on item 2 and 1 on item 3
    assert np.allclose(ops.attraction(S, 0), [0.0, 0.5, 1.5])


def test_a_child_tying_the_worst_member_replaces_the_first_such_member() -> None:
    # child = row 0's scores: loads [3,2,2,1], fitness rows 0 and 1 and child all 5/6 → slot 0 goes
    assert ops.niche_replacement(S, [1, 1, 0, 0]) == 0


def test_a_child_worse_than_every_member_is_rejected() -> None:
    # loads [2,1,2,2]: rows 1.5, 1.0, 1.0; child 0.5
    assert ops.niche_replacement(S, [0, 0, 0, 1]) is None


def test_a_child_solving_everything_replaces_the_least_fit_member() -> None:
    # loads [3,2,3,2]: rows 5/6, 2/3, 5/6; child 5/3
    assert ops.niche_replacement(S, [1, 1, 1, 1]) == 1


def test_proportional_draws_by_weight_and_falls_back_to_uniform() -> None:
    draws = [ops.proportional(rng(s), [0.0, 3.0, 1.0]) for s in range(2000)]
    assert 0 not in draws and abs(draws.count(1) / 2000 - 0.75) < 0.03
    assert {ops.proportional(rng(s), [0.0, 0.0, 0.0], fallback=[1, 2]) for s in range(50)} == {1, 2}


@pytest.mark.parametrize("op", ["uniform", "blend", "sbx", "split", "gauss", "poly", "tournament"])
def test_operators_depend_only_on_the_generator_given(op: str) -> None:
    def run(seed: int, global_seed: int):
        g = rng(seed)
        np.random.seed(global_seed)  # the global generators' state must not matter
        random.seed(global_seed)
        return {
            "uniform": lambda: ops.uniform_crossover(g, A, B)[0],
            "blend": lambda: ops.blend_crossover(g, A, B),
            "sbx": lambda: ops.sbx_crossover(g, A, B)[0],
            "split": lambda: np.array(ops.draw_split(g, 5)),
            "gauss": lambda: ops.gaussian_mutation(g, A, 0.1),
            "poly": lambda: ops.polynomial_mutation(g, A, rate=1.0),
            "tournament": lambda: ops.tournament(g, [1.0, 2.0, 3.0], 5),
        }[op]()

    assert np.array_equal(run(3, global_seed=1), run(3, global_seed=2))
    assert not np.array_equal(run(3, global_seed=1), run(4, global_seed=1))
