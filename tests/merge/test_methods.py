"""Every merge operator against a float64 reference written here, independently of evomerge's helpers.

The references are plain Python over the flattened entries. Rank conventions they spell out:
ranks by |τ| descending, tied magnitudes ranked by flat index (lower first); trim counts as
mergekit's (``max(1, int(d·n))`` for TIES, ``int(d·n)`` kept and ``int(γ·n)`` outliers for
breadcrumbs).
"""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.merge import sparsify
from evomerge.merge.draws import uniform_draws
from evomerge.merge.registry import get_method, method_names

F64 = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def vec(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


@pytest.fixture
def family() -> tuple[torch.Tensor, list[torch.Tensor]]:
    base = rand(6, 5, seed=1)
    return base, [base + 0.3 * rand(6, 5, seed=10 + k) for k in range(3)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-9, atol=1e-12)


def draws_for(shape, k: int, seed: int = 0) -> list[torch.Tensor]:
    return [uniform_draws(seed, "w", i, shape) for i in range(k)]


# ---- float64 references ------------------------------------------------------------------------


def flat(t: torch.Tensor) -> list[float]:
    return t.flatten().tolist()


def as_tensor(values: list[float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=F64).reshape(like.shape)


def ref_ranks(tau: list[float]) -> list[int]:
    """Rank of each entry by |τ|, largest first, ties by index."""
    order = sorted(range(len(tau)), key=lambda i: (-abs(tau[i]), i))
    rank = [0] * len(tau)
    for r, i in enumerate(order):
        rank[i] = r
    return rank


def ref_topk(tau: list[float], density: float) -> list[float]:
    n = len(tau)
    k = n if density >= 1 else (0 if density <= 0 else max(1, int(density * n)))
    return [t if r < k else 0.0 for t, r in zip(tau, ref_ranks(tau), strict=True)]


def ref_breadcrumbs(tau: list[float], density: float, gamma: float) -> list[float]:
    n = len(tau)
    if density >= 1:
        return list(tau)
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)  # dropped from the small end
    start = n - bottom - keep  # outliers actually dropped from the large end
    return [t if start <= r < start + keep else 0.0 for t, r in zip(tau, ref_ranks(tau), strict=True)]


def ref_della_p(tau: list[float], row_length: int, density: float, epsilon: float) -> list[float]:
    p = []
    for r0 in range(0, len(tau), row_length):
        row = tau[r0:r0 + row_length]
        asc = sorted(range(len(row)), key=lambda i: (abs(row[i]), i))
        rank = {i: r for r, i in enumerate(asc)}
        p += [density - epsilon + 2 * epsilon * rank[i] / (len(row) - 1) for i in range(len(row))]
    return p


def ref_drop(tau: list[float], u: list[float], p: list[float]) -> list[float]:
    return [t / min(pi, 1.0) if ui < pi else 0.0 for t, ui, pi in zip(tau, u, p, strict=True)]


def ref_combine(base: list[float], deltas: list[list[float]], weight, *, consensus: bool, normalize: bool,
                lam: float) -> list[float]:
    out = []
    for i, b in enumerate(base):
        vals = [w * d[i] for w, d in zip(weight, deltas, strict=True)]
        if consensus:
            sign = 1.0 if sum(vals) >= 0 else -1.0
            agree = [k for k, v in enumerate(vals) if v != 0 and math.copysign(1.0, v) == sign]
            num = sum(vals[k] for k in agree)
            den = sum(weight[k] for k in agree) or 1.0
        else:
            num = sum(vals)
            den = sum(weight) if abs(sum(weight)) >= 1e-8 else 1.0
        out.append(b + lam * (num / den if normalize else num))
    return out


def ref_task_vector_merge(base, sources, weight, sparsify_one, *, consensus, normalize, lam=1.0):
    b = flat(base)
    deltas = [sparsify_one(k, [s - x for s, x in zip(flat(src), b, strict=True)]) for k, src in enumerate(sources)]
    return as_tensor(ref_combine(b, deltas, weight, consensus=consensus, normalize=normalize, lam=lam), base)


def ref_ties(base, sources, weight, density, lam=1.0, normalize=True):
    return ref_task_vector_merge(base, sources, weight, lambda k, tau: ref_topk(tau, density[k]),
                                 consensus=True, normalize=normalize, lam=lam)


def ref_slerp(a: list[float], b: list[float], t: float) -> list[float]:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    dot = sum(x * y for x, y in zip(a, b, strict=True)) / ((na if na > 1e-8 else 1) * (nb if nb > 1e-8 else 1))
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > 0.9995:
        return [(1 - t) * x + t * y for x, y in zip(a, b, strict=True)]
    om = math.acos(dot)
    return [math.sin((1 - t) * om) / math.sin(om) * x + math.sin(t * om) / math.sin(om) * y
            for x, y in zip(a, b, strict=True)]


# ---- the registry's view -----------------------------------------------------------------------


def test_every_method_of_the_design_is_registered() -> None:
    want = {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
            "della", "della_linear", "slerp", "model_stock", "nearswap", "sce", "karcher", "nuslerp", "multislerp",
            "tsvm", "pcb"}
    assert want <= set(method_names())


def test_methods_declare_their_genes_and_randomness() -> None:
    ties, dare, slerp = get_method("ties"), get_method("dare_ties"), get_method("slerp")
    assert set(ties.per_source) == {"weight", "density"} and ties.globals["lam"] == 1.0 and not ties.random
    assert dare.random and get_method("della").random and not get_method("breadcrumbs").random
    assert slerp.globals == {"t": 0.5} and slerp.max_sources == 1
    assert "lambda" not in ties.globals and "draws" not in dare.globals


# ---- linear and task arithmetic ------------------------------------------------------------------


def test_linear_is_the_normalized_weighted_average_with_negative_weights(family) -> None:
    _, srcs = family
    w = [0.5, 2.0, -0.5]
    close(get_method("linear")(None, srcs, weight=w), sum(wi * s for wi, s in zip(w, srcs, strict=True)) / sum(w))


def test_linear_without_normalization_is_the_weighted_sum(family) -> None:
    _, srcs = family
    close(get_method("linear")(None, srcs, weight=[1.0, 0.5, 2.0], normalize=False),
          srcs[0] + 0.5 * srcs[1] + 2 * srcs[2])


def test_linear_with_weights_summing_to_zero_is_left_undivided(family) -> None:
    _, srcs = family
    close(get_method("linear")(None, srcs[:2], weight=[1.0, -1.0]), srcs[0] - srcs[1])


def test_linear_ignores_the_base(family) -> None:
    base, srcs = family
    m = get_method("linear")
    close(m(base, srcs, weight=[1.0, 2.0, 3.0]), m(None, srcs, weight=[1.0, 2.0, 3.0]))


def test_task_arithmetic_adds_lambda_times_weighted_task_vectors(family) -> None:
    base, srcs = family
    w = [1.0, -0.5, 0.25]
    want = base + 0.7 * sum(wi * (s - base) for wi, s in zip(w, srcs, strict=True))
    close(get_method("task_arithmetic")(base, srcs, weight=w, lam=0.7), want)


def test_task_arithmetic_with_normalize_divides_by_the_weight_sum_before_lambda(family) -> None:
    base, srcs = family
    w = [1.0, 0.5, 0.5]
    want = base + 0.7 * sum(wi * (s - base) for wi, s in zip(w, srcs, strict=True)) / 2.0
    close(get_method("task_arithmetic")(base, srcs, weight=w, lam=0.7, normalize=True), want)


IDENTICAL = {
    "linear": dict(weight=[0.2, 0.3, 0.5]),
    "task_arithmetic": dict(weight=[0.5, 0.25, 0.25]),
    "ties": dict(weight=[1.0, 0.5, 2.0], density=[1.0] * 3),
    "dare_linear": dict(weight=[1.0, 1.0, 1.0], density=[1.0] * 3, normalize=True),
    "dare_ties": dict(weight=[1.0, 0.5, 2.0], density=[1.0] * 3, normalize=True),
    "breadcrumbs": dict(weight=[0.5, 0.5, 0.5], density=[1.0] * 3, normalize=True),
    "breadcrumbs_ties": dict(weight=[1.0, 0.5, 2.0], density=[1.0] * 3, normalize=True),
    "della": dict(weight=[1.0, 0.5, 2.0], density=[1.0] * 3),
    "model_stock": dict(),
}


@pytest.mark.parametrize("name", sorted(IDENTICAL))
def test_identical_parents_merge_back_to_the_parent(family, name) -> None:
    base, srcs = family
    kwargs = dict(IDENTICAL[name])
    if get_method(name).random:
        kwargs["draws"] = draws_for(base.shape, 3)
    close(get_method(name)(base, [srcs[0]] * 3, **kwargs), srcs[0])


def test_slerp_of_a_model_with_itself_is_that_model(family) -> None:
    _, srcs = family
    close(get_method("slerp")(srcs[0], [srcs[0]], t=0.3), srcs[0])


# ---- TIES ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9, 1.0])
def test_ties_matches_the_reference(family, density) -> None:
    base, srcs = family
    w = [1.0, 0.6, 1.4]
    got = get_method("ties")(base, srcs, weight=w, density=[density] * 3, lam=0.8)
    close(got, ref_ties(base, srcs, w, [density] * 3, lam=0.8))


def test_ties_with_negative_weights_and_mixed_densities_matches_the_reference(family) -> None:
    base, srcs = family
    w, d = [1.0, -0.7, 0.4], [0.6, 0.5, 0.8]
    close(get_method("ties")(base, srcs, weight=w, density=d), ref_ties(base, srcs, w, d))


def test_ties_without_normalize_sums_the_agreeing_entries(family) -> None:
    base, srcs = family
    w, d = [1.0, 0.6, 1.4], [0.5, 0.5, 0.5]
    close(get_method("ties")(base, srcs, weight=w, density=d, normalize=False),
          ref_ties(base, srcs, w, d, normalize=False))


def test_ties_density_zero_keeps_the_base(family) -> None:
    base, srcs = family
    close(get_method("ties")(base, srcs, weight=[1.0] * 3, density=[0.0] * 3), base)


def test_ties_sign_tie_counts_as_positive() -> None:
    base = torch.zeros(2, dtype=F64)
    srcs = [vec(1.0, -2.0), vec(-1.0, 2.0)]
    got = get_method("ties")(base, srcs, weight=[1.0, 1.0], density=[1.0, 1.0])
    close(got, vec(1.0, 2.0))  # both sums are 0: + is elected, the + entries averaged


def test_ties_elects_the_sign_of_the_weighted_sum() -> None:
    base = torch.zeros(1, dtype=F64)
    srcs = [vec(1.0), vec(-1.0)]  # the negative source outweighs the positive one
    close(get_method("ties")(base, srcs, weight=[1.0, 3.0], density=[1.0, 1.0]), vec(-1.0))


def test_ties_zero_entries_stay_out_of_the_disjoint_mean() -> None:
    base = torch.zeros(2, dtype=F64)
    srcs = [vec(2.0, 0.0), vec(0.0, 4.0)]
    close(get_method("ties")(base, srcs, weight=[1.0, 1.0], density=[1.0, 1.0]), vec(2.0, 4.0))


def test_ties_with_one_source_and_density_one_is_task_arithmetic(family) -> None:
    base, srcs = family
    close(get_method("ties")(base, srcs[:1], weight=[1.0], density=[1.0], lam=0.6),
          get_method("task_arithmetic")(base, srcs[:1], weight=[1.0], lam=0.6))


def test_ties_trim_count_truncates_like_mergekit() -> None:
    tau = vec(10, 9, 8, 7, 6, 5, 4, 3, 2, 1)  # d·n = 3.5: mergekit keeps 3, ⌈d·n⌉ would keep 4
    got = get_method("ties")(torch.zeros(10, dtype=F64), [tau], weight=[1.0], density=[0.35])
    close(got, vec(10, 9, 8, 0, 0, 0, 0, 0, 0, 0))


def test_ties_keeps_one_entry_when_the_count_truncates_to_zero() -> None:
    tau = vec(0.1, -0.9, 0.3, 0.2, 0.4)
    got = get_method("ties")(torch.zeros(5, dtype=F64), [tau], weight=[1.0], density=[0.1])
    close(got, vec(0.0, -0.9, 0.0, 0.0, 0.0))


def test_ties_keeps_exactly_the_count_when_magnitudes_tie_at_the_cut() -> None:
    tau = vec(0.5, 1.0, -1.0, 1.0, 1.0, 0.2)  # k = 3 of four entries of magnitude 1: the first three
    got = get_method("ties")(torch.zeros(6, dtype=F64), [tau], weight=[1.0], density=[0.5])
    close(got, vec(0.0, 1.0, -1.0, 1.0, 0.0, 0.0))


# ---- DARE ----------------------------------------------------------------------------------------


def test_dare_linear_keeps_entries_drawn_below_density_rescaled_by_its_inverse(family) -> None:
    base, srcs = family
    d, w = [0.3, 0.6, 0.9], [1.0, -0.5, 2.0]
    u = draws_for(base.shape, 3)
    want = ref_task_vector_merge(base, srcs, w, lambda k, tau: ref_drop(tau, flat(u[k]), [d[k]] * len(tau)),
                                 consensus=False, normalize=False, lam=0.8)
    close(get_method("dare_linear")(base, srcs, weight=w, density=d, draws=u, lam=0.8), want)


def test_dare_ties_applies_sign_election_to_the_dropped_vectors(family) -> None:
    base, srcs = family
    d, w = [0.5, 0.7, 0.4], [1.0, 0.5, 1.5]
    u = draws_for(base.shape, 3)
    want = ref_task_vector_merge(base, srcs, w, lambda k, tau: ref_drop(tau, flat(u[k]), [d[k]] * len(tau)),
                                 consensus=True, normalize=False)
    close(get_method("dare_ties")(base, srcs, weight=w, density=d, draws=u), want)


@pytest.mark.parametrize("name", ["dare_linear", "dare_ties"])
def test_dare_density_one_is_the_undropped_merge(family, name) -> None:
    base, srcs = family
    w = [1.0, 0.5, -0.5]
    got = get_method(name)(base, srcs, weight=w, density=[1.0] * 3, draws=draws_for(base.shape, 3))
    want = ref_task_vector_merge(base, srcs, w, lambda k, tau: tau, consensus=name == "dare_ties", normalize=False)
    close(got, want)


def test_dare_density_zero_keeps_the_base(family) -> None:
    base, srcs = family
    close(get_method("dare_linear")(base, srcs, weight=[1.0] * 3, density=[0.0] * 3, draws=draws_for(base.shape, 3)),
          base)


def test_dare_mean_over_many_seeds_approaches_the_task_vector() -> None:
    base = torch.zeros(200, dtype=F64)
    src = rand(200, seed=3)
    runs = [get_method("dare_linear")(base, [src], weight=[1.0], density=[0.3],
                                      draws=[uniform_draws(s, "t", 0, (200,))])
            for s in range(2000)]
    mean = torch.stack(runs).mean(dim=0)
    # per entry the estimate's standard error is |τ|·sqrt((1−d)/d)/sqrt(2000) ≈ 0.034|τ|: 0.2|τ| is ~6σ
    assert bool(((mean - src).abs() <= 0.2 * src.abs()).all())


def test_raising_dare_density_only_adds_entries(family) -> None:
    base, srcs = family
    u = draws_for(base.shape, 1)
    low = get_method("dare_linear")(base, srcs[:1], weight=[1.0], density=[0.3], draws=u) - base
    high = get_method("dare_linear")(base, srcs[:1], weight=[1.0], density=[0.6], draws=u) - base
    assert bool(((low != 0) <= (high != 0)).all()) and bool((high != 0).sum() > (low != 0).sum())


# ---- DELLA ---------------------------------------------------------------------------------------


def test_della_keep_probability_rises_with_rank_within_each_row() -> None:
    base = torch.zeros(2, 5, dtype=F64)
    src = torch.tensor([[0.1, -0.5, 0.3, 0.2, -0.4], [5.0, 1.0, 4.0, 2.0, 3.0]], dtype=F64)
    # row 0 ranks |τ| 0.1→0 … 0.5→4, row 1 1→0 … 5→4 (rows apart); p = .3 + rank/4 · .4 with d=.5, ε=.2
    p = [[0.3, 0.7, 0.5, 0.4, 0.6], [0.7, 0.3, 0.6, 0.4, 0.5]]
    u = torch.full((2, 5), 0.45)
    got = get_method("della_linear")(base, [src], weight=[1.0], density=[0.5], epsilon=0.2, draws=[u])
    want = [[v / pi if pi > 0.45 else 0.0 for v, pi in zip(row, prow, strict=True)]
            for row, prow in zip(src.tolist(), p, strict=True)]
    close(got, torch.tensor(want, dtype=F64))


@pytest.mark.parametrize("shape", [(6, 5), (30,)], ids=["matrix", "vector"])
def test_della_matches_the_reference(shape) -> None:
    base = rand(*shape, seed=1)
    srcs = [base + 0.3 * rand(*shape, seed=10 + k) for k in range(3)]
    d, w, eps = [0.4, 0.6, 0.5], [1.0, 0.7, 1.3], 0.2
    u = draws_for(shape, 3)
    row = shape[-1] if len(shape) == 2 else shape[0]
    want = ref_task_vector_merge(
        base, srcs, w, lambda k, tau: ref_drop(tau, flat(u[k]), ref_della_p(tau, row, d[k], eps)),
        consensus=True, normalize=True, lam=0.9,
    )
    close(get_method("della")(base, srcs, weight=w, density=d, epsilon=eps, lam=0.9, draws=u), want)


def test_della_never_keeps_entries_whose_probability_is_not_positive() -> None:
    tau = vec(0.1, 0.2, 0.3, 0.4, 0.5)  # d=.05, ε=.2: p = -.15, -.05, .05, .15, .25
    got = get_method("della_linear")(torch.zeros(5, dtype=F64), [tau], weight=[1.0], density=[0.05], epsilon=0.2,
                                     draws=[torch.zeros(5)])
    close(got, vec(0.0, 0.0, 0.3 / 0.05, 0.4 / 0.15, 0.5 / 0.25))


def test_della_keeps_probabilities_above_one_unscaled() -> None:
    tau = vec(0.1, 0.2, 0.3, 0.4, 0.5)  # d=.9, ε=.2: p = .7, .8, .9, 1.0, 1.1
    got = get_method("della_linear")(torch.zeros(5, dtype=F64), [tau], weight=[1.0], density=[0.9], epsilon=0.2,
                                     draws=[torch.full((5,), 0.85)])
    close(got, vec(0.0, 0.0, 0.3 / 0.9, 0.4, 0.5))


def test_della_density_one_keeps_the_task_vectors_whole(family) -> None:
    base, srcs = family
    got = get_method("della_linear")(base, srcs, weight=[1.0] * 3, density=[1.0] * 3, draws=draws_for(base.shape, 3))
    close(got, get_method("task_arithmetic")(base, srcs, weight=[1.0] * 3))


# ---- breadcrumbs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n,density,gamma",
                         [(7, 0.5, 0.1), (50, 0.3, 0.05), (99, 0.9, 0.2), (5, 0.1, 0.01), (300, 0.4, 0.01)])
def test_breadcrumbs_drops_outliers_and_small_entries(n, density, gamma) -> None:
    base = rand(n, seed=1)
    src = base + rand(n, seed=n)
    want = ref_task_vector_merge(base, [src], [0.8], lambda k, tau: ref_breadcrumbs(tau, density, gamma),
                                 consensus=False, normalize=False, lam=1.2)
    close(get_method("breadcrumbs")(base, [src], weight=[0.8], density=[density], gamma=gamma, lam=1.2), want)


def test_breadcrumbs_drops_no_outlier_on_a_tensor_under_one_over_gamma_entries() -> None:
    tau = vec(*[float(i) for i in range(1, 51)])  # n = 50 < 1/0.01: int(γ·n) = 0, keep the top 25
    got = get_method("breadcrumbs")(torch.zeros(50, dtype=F64), [tau], weight=[1.0], density=[0.5], gamma=0.01)
    close(got, torch.where(tau > 25, tau, torch.zeros_like(tau)))


def test_breadcrumbs_keep_count_truncating_to_zero_keeps_nothing() -> None:
    base, src = torch.zeros(5, dtype=F64), rand(5, seed=2)
    close(get_method("breadcrumbs")(base, [src], weight=[1.0], density=[0.1]), base)


def test_breadcrumbs_outlier_cut_shrinks_to_keep_the_density() -> None:
    tau = vec(*[float(i) for i in range(1, 11)])  # keep 9, γ·n = 2 outliers: only 1 can go
    got = get_method("breadcrumbs")(torch.zeros(10, dtype=F64), [tau], weight=[1.0], density=[0.9], gamma=0.2)
    close(got, torch.where(tau < 10, tau, torch.zeros_like(tau)))


def test_breadcrumbs_density_one_is_task_arithmetic(family) -> None:
    base, srcs = family
    close(get_method("breadcrumbs")(base, srcs, weight=[1.0, 0.5, 2.0], density=[1.0] * 3, gamma=0.1),
          get_method("task_arithmetic")(base, srcs, weight=[1.0, 0.5, 2.0]))


def test_breadcrumbs_ties_matches_the_reference(family) -> None:
    base, srcs = family
    w, d, gamma = [1.0, -0.5, 1.5], [0.5, 0.7, 0.4], 0.1
    want = ref_task_vector_merge(base, srcs, w, lambda k, tau: ref_breadcrumbs(tau, d[k], gamma),
                                 consensus=True, normalize=False)
    close(get_method("breadcrumbs_ties")(base, srcs, weight=w, density=d, gamma=gamma), want)


# ---- SLERP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 1.0])
def test_slerp_matches_the_whole_tensor_reference(t) -> None:
    a, b = rand(4, 6, seed=5), rand(4, 6, seed=6)
    close(get_method("slerp")(a, [b], t=t), as_tensor(ref_slerp(flat(a), flat(b), t), a))


def test_slerp_endpoints_are_the_two_models() -> None:
    a, b = rand(3, 4, seed=1), rand(3, 4, seed=2)
    close(get_method("slerp")(a, [b], t=0.0), a)
    close(get_method("slerp")(a, [b], t=1.0), b)


def test_slerp_falls_back_to_linear_for_colinear_tensors() -> None:
    a = rand(2, 8, seed=1)
    close(get_method("slerp")(a, [3.0 * a], t=0.4), 0.6 * a + 0.4 * (3.0 * a))


def test_slerp_falls_back_to_linear_for_opposite_tensors() -> None:
    a = rand(2, 8, seed=1)
    close(get_method("slerp")(a, [-2.0 * a], t=0.4), 0.6 * a + 0.4 * (-2.0 * a))


def test_slerp_stays_spherical_just_under_the_colinear_threshold() -> None:
    a = torch.zeros(2, dtype=F64)
    a[0] = 1.0
    angle = math.acos(0.999)  # cos = 0.999 < 0.9995
    b = vec(math.cos(angle), math.sin(angle))
    got = get_method("slerp")(a.reshape(1, 2), [b.reshape(1, 2)], t=0.5)
    close(got, vec(math.cos(angle / 2), math.sin(angle / 2)).reshape(1, 2))  # on the unit circle, not the chord


# ---- Model Stock ---------------------------------------------------------------------------------


def test_model_stock_interpolates_by_mean_cosine(family) -> None:
    base, srcs = family
    taus = [[s - x for s, x in zip(flat(src), flat(base), strict=True)] for src in srcs]
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    cos = [dot(x, y) / math.sqrt(dot(x, x) * dot(y, y)) for i, x in enumerate(taus) for y in taus[i + 1:]]
    c = sum(cos) / len(cos)
    t = 3 * c / (1 + 2 * c)
    close(get_method("model_stock")(base, srcs), t * sum(srcs) / 3 + (1 - t) * base)


def test_model_stock_keeps_the_base_when_the_interpolation_is_singular(family) -> None:
    base, _ = family
    tau = rand(6, 5, seed=4)  # two opposite task vectors: c = −1, 1 + (N−1)c = 0
    close(get_method("model_stock")(base, [base + tau, base - tau]), base)


def test_model_stock_of_sources_equal_to_the_base_is_the_base(family) -> None:
    base, _ = family
    close(get_method("model_stock")(base, [base.clone(), base.clone()]), base)


# ---- NearSwap ------------------------------------------------------------------------------------


def ref_nearswap(a: list[float], b: list[float], t: float) -> list[float]:
    """Each entry: the source's where |b − a| ≤ t, else moved by t towards it (distances under 1e-6 count as 1e-6)."""
    out = []
    for x, y in zip(a, b, strict=True):
        w = min(1.0, max(0.0, t / max(abs(y - x), 1e-6)))
        out.append(w * y + (1 - w) * x)
    return out


@pytest.mark.parametrize("t", [0.0, 0.05, 0.3, 5.0])
def test_nearswap_matches_the_reference(t) -> None:
    a, b = rand(4, 6, seed=5), rand(4, 6, seed=6)
    close(get_method("nearswap")(a, [b], t=t), as_tensor(ref_nearswap(flat(a), flat(b), t), a))


def test_nearswap_swaps_near_entries_and_moves_far_ones_by_t() -> None:
    got = get_method("nearswap")(vec(0.0, 0.0, 1.0), [vec(0.1, -2.0, 1.0)], t=0.5)
    close(got, vec(0.1, -0.5, 1.0))


# ---- SCE -----------------------------------------------------------------------------------------


def ref_sce(base: torch.Tensor, sources: list[torch.Tensor], select: float) -> torch.Tensor:
    """Select by cross-source variance (ties by index), weight by mean square, erase the minority sign."""
    b = flat(base)
    taus = [[s - x for s, x in zip(flat(src), b, strict=True)] for src in sources]
    n, k_count = len(b), len(taus)
    if select < 1:
        var = [sum((t[i] - sum(u[i] for u in taus) / k_count) ** 2 for t in taus) / k_count for i in range(n)]
        keep = int(sum(v != 0 for v in var) * select) if select > 0 else 0
        chosen = set(sorted(range(n), key=lambda i: (-var[i], i))[:keep])
        taus = [[t[i] if i in chosen else 0.0 for i in range(n)] for t in taus]
    energy = [sum(v * v for v in t) / n for t in taus]
    weights = [e / sum(energy) for e in energy] if abs(sum(energy)) >= 1e-6 else [1 / k_count] * k_count
    out = []
    for i in range(n):
        sign = 1.0 if sum(t[i] for t in taus) >= 0 else -1.0
        agree = [k for k in range(k_count) if taus[k][i] != 0 and math.copysign(1.0, taus[k][i]) == sign]
        den = max(sum(weights[k] for k in agree), 1e-6)
        out.append(b[i] + sum(weights[k] * taus[k][i] for k in agree) / den)
    return as_tensor(out, base)


@pytest.mark.parametrize("select", [0.0, 0.3, 0.75, 1.0])
def test_sce_matches_the_reference(family, select) -> None:
    base, srcs = family
    srcs = [base + (k + 1) * (s - base) for k, s in enumerate(srcs)]  # unequal energies
    close(get_method("sce")(base, srcs, select_topk=select), ref_sce(base, srcs, select))


def test_sce_weights_are_uniform_when_the_task_vectors_are_nearly_zero(family) -> None:
    base, srcs = family
    small = [base + 1e-4 * (s - base) for s in srcs]  # Σ mean(τ²) ≈ 3e-10 < 1e-6
    close(get_method("sce")(base, small), ref_sce(base, small, 1.0))


def test_sce_of_identical_sources_is_that_source(family) -> None:
    base, srcs = family
    close(get_method("sce")(base, [srcs[0]] * 3), srcs[0])


# ---- Karcher mean --------------------------------------------------------------------------------


def ref_karcher(points: list[list[float]], max_iter: int, tol: float) -> list[float]:
    """Riemannian mean of the directions by exp/log-map steps, times the mean norm (plain float64 Python)."""
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    norms = [math.sqrt(dot(p, p)) for p in points]
    units = [[v / r for v in p] for p, r in zip(points, norms, strict=True) if r > tol]
    n = len(points[0])
    mu = [sum(u[i] for u in units) / len(units) for i in range(n)]
    length = math.sqrt(dot(mu, mu))
    mu = list(units[0]) if length < tol else [v / length for v in mu]
    for _ in range(max_iter):
        step = [0.0] * n
        for u in units:
            c = max(-1.0, min(1.0, dot(mu, u)))
            angle = math.acos(c)
            if angle >= tol:
                step = [s + angle / math.sin(angle) / len(units) * (ui - c * mi)
                        for s, ui, mi in zip(step, u, mu, strict=True)]
        size = math.sqrt(dot(step, step))
        if size < tol:
            break
        mu = [math.cos(size) * m + math.sin(size) * s / size for m, s in zip(mu, step, strict=True)]
        length = math.sqrt(dot(mu, mu))
        mu = [v / length for v in mu] if length > tol else mu
    scale = sum(norms) / len(norms)
    return [scale * v for v in mu]


@pytest.mark.parametrize("max_iter", [0, 1, 10])
def test_karcher_matches_the_reference(family, max_iter) -> None:
    _, srcs = family
    srcs = [s * (k + 1) for k, s in enumerate(srcs)]  # unequal norms
    got = get_method("karcher")(None, srcs, max_iter=max_iter)
    close(got, as_tensor(ref_karcher([flat(s) for s in srcs], max_iter, 1e-5), srcs[0]))


def test_karcher_mean_of_two_orthogonal_directions_bisects_them() -> None:
    got = get_method("karcher")(None, [vec(2.0, 0.0), vec(0.0, 4.0)])
    close(got, vec(3.0 / math.sqrt(2), 3.0 / math.sqrt(2)))


def test_karcher_leaves_near_zero_tensors_out_of_the_direction() -> None:
    got = get_method("karcher")(None, [vec(0.0, 3.0), vec(1e-7, 0.0)])
    close(got, vec(0.0, 1.5 + 5e-8))


# ---- NuSLERP and Multi-SLERP (task vectors on the sphere) ---------------------------------------


def ref_nuslerp_rows(a: list[list[float]], b: list[list[float]], t: float) -> list[list[float]]:
    """SLERP of each pair of vectors (norms under 1e-7 count as 1e-7; linear where 1 − cos² ≤ 1e-16)."""
    out = []
    for x, y in zip(a, b, strict=True):
        nx, ny = max(math.sqrt(sum(v * v for v in x)), 1e-7), max(math.sqrt(sum(v * v for v in y)), 1e-7)
        c = max(-1.0, min(1.0, sum(p / nx * q / ny for p, q in zip(x, y, strict=True))))
        if 1 - c * c <= 1e-16:
            out.append([(1 - t) * p + t * q for p, q in zip(x, y, strict=True)])
            continue
        om = math.acos(c)
        out.append([(math.sin((1 - t) * om) * p + math.sin(t * om) * q) / math.sin(om)
                    for p, q in zip(x, y, strict=True)])
    return out


def ref_nuslerp(base: torch.Tensor, srcs: list[torch.Tensor], weight: list[float], layout: str) -> torch.Tensor:
    """θ0 + SLERP of the two task vectors at t = w1 / (w0 + w1): whole tensor, its rows, or its columns."""
    t = 0.5 if abs(sum(weight)) < 1e-6 else weight[1] / sum(weight)
    a, b = srcs[0] - base, srcs[1] - base
    if layout == "columns":
        a, b = a.T, b.T
    rows = lambda x: [flat(x)] if layout == "whole" else x.tolist()  # noqa: E731
    mixed = torch.tensor(ref_nuslerp_rows(rows(a), rows(b), t), dtype=F64).reshape(a.shape)
    return base + (mixed.T if layout == "columns" else mixed)


LAYOUTS = {"whole": {}, "rows": {"nuslerp_flatten": False},
           "columns": {"nuslerp_flatten": False, "nuslerp_row_wise": True}}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("weight", [[1.0, 3.0], [0.5, -0.5]], ids=["t0.75", "weights-cancel"])
def test_nuslerp_matches_the_reference(family, layout, weight) -> None:
    base, srcs = family
    got = get_method("nuslerp")(base, srcs[:2], weight=weight, **LAYOUTS[layout])
    close(got, ref_nuslerp(base, srcs[:2], weight, layout))


def test_nuslerp_of_colinear_task_vectors_is_linear(family) -> None:
    base, srcs = family
    tau = srcs[0] - base
    close(get_method("nuslerp")(base, [base + tau, base + 3 * tau], weight=[1.0, 1.0]), base + 2 * tau)


def ref_multislerp(base: torch.Tensor, srcs: list[torch.Tensor], weight: list[float], normalize: bool,
                   eps: float = 1e-8) -> torch.Tensor:
    taus = [[s - x for s, x in zip(flat(src), flat(base), strict=True)] for src in srcs]
    w = [x / sum(weight) for x in weight] if normalize else list(weight)
    norms = [math.sqrt(sum(v * v for v in t)) for t in taus]
    units = [[v / (r + eps) for v in t] for t, r in zip(taus, norms, strict=True)]
    n = len(taus[0])
    mean = [sum(wk * u[i] for wk, u in zip(w, units, strict=True)) for i in range(n)]
    length = math.sqrt(sum(v * v for v in mean))
    mean = [v / length for v in mean]
    tangent = [0.0] * n
    for wk, u in zip(w, units, strict=True):
        d = sum(p * q for p, q in zip(u, mean, strict=True))
        tangent = [g + wk * (ui - d * mi) for g, ui, mi in zip(tangent, u, mean, strict=True)]
    size = math.sqrt(sum(v * v for v in tangent)) + eps
    scale = sum(wk * r for wk, r in zip(w, norms, strict=True))
    out = [b + scale * (m * math.cos(size) + g * math.sin(size) / size)
           for b, m, g in zip(flat(base), mean, tangent, strict=True)]
    return as_tensor(out, base)


@pytest.mark.parametrize("normalize", [True, False])
def test_multislerp_matches_the_reference(family, normalize) -> None:
    base, srcs = family
    w = [0.5, 1.5, -0.25]
    close(get_method("multislerp")(base, srcs, weight=w, normalize_weights=normalize),
          ref_multislerp(base, srcs, w, normalize))


def test_multislerp_of_two_opposite_task_vectors_with_equal_weights_is_linear(family) -> None:
    base, srcs = family
    tau = srcs[0] - base
    close(get_method("multislerp")(base, [base + tau, base - tau], weight=[1.0, 1.0]), base)


def test_multislerp_refuses_three_task_vectors_whose_unit_mean_cancels(family) -> None:
    base, srcs = family
    tau = srcs[0] - base
    with pytest.raises(EvomergeError, match="^multislerp: the weighted mean of the sources' unit task vectors is zero"):
        get_method("multislerp")(base, [base + tau, base - tau, base + 2 * tau], weight=[1.0, 2.0, 1.0])


def test_multislerp_keeps_a_tensor_no_source_changed(family) -> None:
    base, _ = family
    close(get_method("multislerp")(base, [base.clone()] * 3, weight=[1.0, 2.0, 1.0]), base)


def test_multislerp_refuses_to_normalize_weights_that_sum_to_zero(family) -> None:
    base, srcs = family
    with pytest.raises(EvomergeError, match="^multislerp: the weights sum to 0"):
        get_method("multislerp")(base, srcs[:2], weight=[1.0, -1.0])


# ---- bad parameters: one line naming the parameter and its domain --------------------------------


@pytest.mark.parametrize("name,params,message", [
    ("nearswap", {"t": -0.1}, "nearswap: 't' = -0.1 is outside [0, inf]"),
    ("sce", {"select_topk": 1.5}, "sce: 'select_topk' = 1.5 is outside [0, 1]"),
    ("sce", {"select_topk": "half"}, "sce: 'select_topk' must be a number, got 'half'"),
    ("karcher", {"max_iter": 2.5}, "karcher: 'max_iter' must be a whole number, got 2.5"),
    ("karcher", {"tol": 0}, "karcher: 'tol' = 0 is outside (0, 1]"),
    ("nuslerp", {"nuslerp_flatten": "no"}, "nuslerp: 'nuslerp_flatten' must be true or false, got 'no'"),
    ("multislerp", {"eps": 2.0}, "multislerp: 'eps' = 2.0 is outside (0, 1]"),
])
def test_a_bad_parameter_is_refused_in_one_line(name, params, message) -> None:
    with pytest.raises(EvomergeError) as error:
        get_method(name).validate(get_method(name).min_sources, {}, params)
    assert str(error.value) == message


def test_nearswap_refuses_a_second_source() -> None:
    with pytest.raises(EvomergeError, match="^method 'nearswap' needs exactly 1 source model"):
        get_method("nearswap").validate(2, {}, {})


# ---- dtypes --------------------------------------------------------------------------------------


def call(name: str, base: torch.Tensor, srcs: list[torch.Tensor]) -> torch.Tensor:
    method = get_method(name)
    srcs = srcs[:method.max_sources] if method.max_sources else srcs
    kwargs = {key: [default] * len(srcs) for key, default in method.per_source.items()}
    if "density" in kwargs:
        kwargs["density"] = [0.5] * len(srcs)
    if method.random:
        kwargs["draws"] = draws_for(base.shape, len(srcs))
    return method(base, srcs, **kwargs)


ALL = ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs", "breadcrumbs_ties",
       "della", "della_linear", "slerp", "model_stock", "nearswap", "sce", "karcher", "nuslerp", "multislerp", "tsvm",
       "pcb"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", ALL)
def test_low_precision_inputs_are_merged_in_float32(family, name, dtype) -> None:
    base, srcs = family
    assert call(name, base.to(dtype), [s.to(dtype) for s in srcs]).dtype == torch.float32


@pytest.mark.parametrize("name", ALL)
def test_float64_inputs_are_merged_in_float64(family, name) -> None:
    base, srcs = family
    assert call(name, base, srcs).dtype == F64


@pytest.mark.parametrize("name", ALL)
def test_float32_merge_agrees_with_the_float64_merge(family, name) -> None:
    base, srcs = family
    got = call(name, base.float(), [s.float() for s in srcs])
    torch.testing.assert_close(got.double(), call(name, base, srcs), rtol=1e-5, atol=1e-6)


# ---- the cached-sort contract of the fast path (docs/DESIGN.md, "Materialization") -------------------


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 1.0])
def test_masks_from_cached_sorted_magnitudes_equal_the_uncached_ones(density) -> None:
    tau = torch.round(rand(40, 7, seed=8) * 4) / 4  # many tied magnitudes
    cached = sparsify.sorted_magnitudes(tau)
    assert torch.equal(sparsify.magnitude_mask(tau, density, cached), sparsify.magnitude_mask(tau, density))
    assert torch.equal(sparsify.outlier_mask(tau, density, 0.1, cached), sparsify.outlier_mask(tau, density, 0.1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("descending", [False, True])
def test_magnitudes_sort_by_their_bits_as_a_stable_float_sort_does(dtype, descending) -> None:
    magnitudes = (torch.round(rand(4000, seed=3) * 8) / 8).abs().to(dtype)  # many ties
    magnitudes[::97], magnitudes[5], magnitudes[6] = 0.0, math.inf, torch.finfo(dtype).tiny / 4  # zeros, inf, subnormal
    values, order = sparsify.sort_magnitudes(magnitudes, descending=descending)
    want = magnitudes.sort(descending=descending, stable=True)
    assert torch.equal(values, want.values) and torch.equal(order, want.indices)


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.77])
def test_trimming_keeps_exactly_the_count_on_heavily_tied_tensors(density) -> None:
    base = torch.zeros(40, 7, dtype=F64)
    tau = torch.round(rand(40, 7, seed=8) * 4) / 4
    want = as_tensor(ref_topk(flat(tau), density), tau)
    close(get_method("ties")(base, [tau], weight=[1.0], density=[density]), want)
    want = as_tensor(ref_breadcrumbs(flat(tau), density, 0.1), tau)
    close(get_method("breadcrumbs")(base, [tau], weight=[1.0], density=[density], gamma=0.1), want)
