"""Every merge operator against a float64 reference written here, independently of evomerge's helpers."""

from __future__ import annotations

import math

import pytest
import torch

from evomerge.merge.draws import uniform_draws
from evomerge.merge.registry import get_method


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def family() -> tuple[torch.Tensor, list[torch.Tensor]]:
    base = rand(6, 5, seed=1)
    return base, [base + 0.3 * rand(6, 5, seed=10 + k) for k in range(3)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.double(), b.double(), rtol=1e-9, atol=1e-12)


# ---- float64 references (plain Python over flattened entries) --------------------------------


def ref_topk_mask(tau: list[float], density: float) -> list[bool]:
    n = len(tau)
    k = n if density >= 1 else (0 if density <= 0 else max(1, int(density * n)))
    order = sorted(range(n), key=lambda i: -abs(tau[i]))
    keep = set(order[:k])
    return [i in keep for i in range(n)]


def ref_ties(base, sources, weight, density, lam=1.0, normalize=True):
    b = base.flatten().tolist()
    taus = [[s - x for s, x in zip(src.flatten().tolist(), b)] for src in sources]
    trimmed = [[t if m else 0.0 for t, m in zip(tau, ref_topk_mask(tau, d))] for tau, d in zip(taus, density)]
    out = []
    for i in range(len(b)):
        total = sum(w * tr[i] for w, tr in zip(weight, trimmed))
        sign = 1.0 if total >= 0 else -1.0
        num = den = 0.0
        for w, tr in zip(weight, trimmed):
            v = w * tr[i]
            if v != 0 and math.copysign(1.0, v) == sign:
                num += v
                den += w
        mixed = num / (den if den != 0 else 1.0) if normalize else num
        out.append(b[i] + lam * mixed)
    return torch.tensor(out, dtype=torch.float64).reshape(base.shape)


def ref_slerp(a: list[float], b: list[float], t: float) -> list[float]:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    dot = sum(x * y for x, y in zip(a, b)) / ((na if na > 1e-8 else 1) * (nb if nb > 1e-8 else 1))
    dot = max(-1.0, min(1.0, dot))
    if abs(dot) > 0.9995:
        return [(1 - t) * x + t * y for x, y in zip(a, b)]
    om = math.acos(dot)
    return [math.sin((1 - t) * om) / math.sin(om) * x + math.sin(t * om) / math.sin(om) * y for x, y in zip(a, b)]


# ---- linear and task arithmetic ---------------------------------------------------------------


def test_linear_is_the_normalized_weighted_average(family) -> None:
    _, srcs = family
    w = [0.5, 2.0, -0.5]
    close(get_method("linear")(None, srcs, weight=w), sum(wi * s for wi, s in zip(w, srcs)) / sum(w))


def test_linear_without_normalization_is_the_weighted_sum(family) -> None:
    _, srcs = family
    close(get_method("linear")(None, srcs, weight=[1.0, 1.0, 1.0], normalize=False), srcs[0] + srcs[1] + srcs[2])


def test_task_arithmetic_adds_scaled_task_vectors_with_negative_weights(family) -> None:
    base, srcs = family
    w = [1.0, -0.5, 0.25]
    want = base + 0.7 * sum(wi * (s - base) for wi, s in zip(w, srcs))
    close(get_method("task_arithmetic")(base, srcs, weight=w, lam=0.7), want)


def test_identical_parents_merge_back_to_the_parent(family) -> None:
    base, srcs = family
    same = [srcs[0]] * 3
    close(get_method("linear")(None, same, weight=[0.2, 0.3, 0.5]), srcs[0])
    close(get_method("ties")(base, same, weight=[1.0] * 3, density=[1.0] * 3), srcs[0])
    close(get_method("model_stock")(base, same), srcs[0])
    close(get_method("slerp")(srcs[0], [srcs[0]], t=0.3), srcs[0])


# ---- TIES ----------------------------------------------------------------------------------


@pytest.mark.parametrize("density", [0.2, 0.5, 0.9, 1.0])
def test_ties_matches_the_reference(family, density) -> None:
    base, srcs = family
    w = [1.0, 0.6, 1.4]
    got = get_method("ties")(base, srcs, weight=w, density=[density] * 3, lam=0.8)
    close(got, ref_ties(base, srcs, w, [density] * 3, lam=0.8))


def test_ties_with_negative_weights_matches_the_reference(family) -> None:
    base, srcs = family
    w, d = [1.0, -0.7, 0.4], [0.6, 0.5, 0.8]
    close(get_method("ties")(base, srcs, weight=w, density=d), ref_ties(base, srcs, w, d))


def test_ties_density_zero_keeps_the_base(family) -> None:
    base, srcs = family
    close(get_method("ties")(base, srcs, weight=[1.0] * 3, density=[0.0] * 3), base)


def test_ties_sign_tie_counts_as_positive() -> None:
    base = torch.zeros(2, dtype=torch.float64)
    srcs = [torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([-1.0, 2.0], dtype=torch.float64)]
    got = get_method("ties")(base, srcs, weight=[1.0, 1.0], density=[1.0, 1.0])
    close(got, torch.tensor([1.0, 2.0], dtype=torch.float64))  # sums are 0: + elected, the + entries averaged


def test_ties_with_one_source_and_density_one_is_task_arithmetic(family) -> None:
    base, srcs = family
    close(get_method("ties")(base, srcs[:1], weight=[1.0], density=[1.0], lam=0.6),
          get_method("task_arithmetic")(base, srcs[:1], weight=[1.0], lam=0.6))


# ---- DARE, DELLA ----------------------------------------------------------------------------


def draws_for(shape, k: int, seed: int = 0):
    return [uniform_draws(seed, "w", i, shape).double() for i in range(k)]


def test_dare_linear_keeps_entries_whose_draw_is_below_density(family) -> None:
    base, srcs = family
    d = [0.3, 0.6, 1.0]
    u = draws_for(base.shape, 3)
    want = base.clone()
    for s, di, ui in zip(srcs, d, u):
        tau = s - base
        want = want + torch.where(ui < di, tau / di, torch.zeros_like(tau)) if di < 1 else want + tau
    close(get_method("dare_linear")(base, srcs, weight=[1.0] * 3, density=d, draws=u), want)


def test_dare_mean_over_many_seeds_approaches_the_task_vector() -> None:
    base = torch.zeros(200, dtype=torch.float64)
    src = rand(200, seed=3)
    runs = [get_method("dare_linear")(base, [src], weight=[1.0], density=[0.3], draws=[uniform_draws(s, "t", 0, (200,)).double()])
            for s in range(2000)]
    mean = torch.stack(runs).mean(dim=0)
    # per entry the estimate's standard error is |τ|·sqrt((1−d)/d)/sqrt(2000) ≈ 0.034|τ|: 0.2|τ| is ~6σ
    assert bool(((mean - src).abs() <= 0.2 * src.abs()).all())


def test_raising_density_only_adds_dare_entries(family) -> None:
    base, srcs = family
    u = draws_for(base.shape, 1)
    low = get_method("dare_linear")(base, srcs[:1], weight=[1.0], density=[0.3], draws=u) - base
    high = get_method("dare_linear")(base, srcs[:1], weight=[1.0], density=[0.6], draws=u) - base
    assert bool(((low != 0) <= (high != 0)).all())


def test_dare_ties_applies_sign_election_to_the_dropped_vectors(family) -> None:
    base, srcs = family
    d, w = [0.5, 0.7, 0.4], [1.0, 0.5, 1.5]
    u = draws_for(base.shape, 3)
    dropped = [base + torch.where(ui < di, (s - base) / di, torch.zeros_like(base)) for s, di, ui in zip(srcs, d, u)]
    want = ref_ties(base, dropped, w, [1.0] * 3, normalize=False)
    close(get_method("dare_ties")(base, srcs, weight=w, density=d, draws=u), want)


def test_della_keep_probability_rises_with_rank_within_rows() -> None:
    base = torch.zeros(1, 5, dtype=torch.float64)
    src = torch.tensor([[0.1, -0.5, 0.3, 0.2, -0.4]], dtype=torch.float64)
    # ranks by |τ|: 0.1→0, 0.2→1, 0.3→2, 0.4→3, 0.5→4; p = d−ε + rank/4 · 2ε with d=.5, ε=.2
    p = {0.1: 0.3, 0.2: 0.4, 0.3: 0.5, 0.4: 0.6, 0.5: 0.7}
    u = torch.full((1, 5), 0.45, dtype=torch.float64)
    got = get_method("della_linear")(base, [src], weight=[1.0], density=[0.5], epsilon=0.2, draws=[u])
    want = [v / p[abs(v)] if p[abs(v)] > 0.45 else 0.0 for v in src.flatten().tolist()]
    close(got, torch.tensor([want], dtype=torch.float64))


# ---- breadcrumbs ---------------------------------------------------------------------------


def ref_breadcrumbs_mask(tau: list[float], density: float, gamma: float) -> list[bool]:
    n = len(tau)
    if density >= 1:
        return [True] * n
    keep, top = int(density * n), int(gamma * n)
    bottom = max(0, n - keep - top)
    order = sorted(range(n), key=lambda i: abs(tau[i]))
    chosen = set(order[bottom:bottom + keep])
    return [i in chosen for i in range(n)]


@pytest.mark.parametrize("n,density,gamma", [(7, 0.5, 0.1), (50, 0.3, 0.05), (99, 0.9, 0.2), (5, 0.1, 0.01), (300, 0.4, 0.01)])
def test_breadcrumbs_drops_outliers_and_small_entries(n, density, gamma) -> None:
    base = torch.zeros(n, dtype=torch.float64)
    src = rand(n, seed=n)
    mask = ref_breadcrumbs_mask(src.tolist(), density, gamma)
    want = torch.tensor([v if m else 0.0 for v, m in zip(src.tolist(), mask)], dtype=torch.float64)
    close(get_method("breadcrumbs")(base, [src], weight=[1.0], density=[density], gamma=gamma), want)


def test_breadcrumbs_count_rounding_to_zero_keeps_nothing() -> None:
    base, src = torch.zeros(5, dtype=torch.float64), rand(5, seed=2)
    close(get_method("breadcrumbs")(base, [src], weight=[1.0], density=[0.1]), base)


# ---- SLERP ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 1.0])
def test_slerp_matches_the_whole_tensor_reference(t) -> None:
    a, b = rand(4, 6, seed=5), rand(4, 6, seed=6)
    want = torch.tensor(ref_slerp(a.flatten().tolist(), b.flatten().tolist(), t), dtype=torch.float64).reshape(4, 6)
    close(get_method("slerp")(a, [b], t=t), want)


def test_slerp_endpoints_are_the_two_models() -> None:
    a, b = rand(3, 4, seed=1), rand(3, 4, seed=2)
    close(get_method("slerp")(a, [b], t=0.0), a)
    close(get_method("slerp")(a, [b], t=1.0), b)


def test_slerp_falls_back_to_linear_for_colinear_tensors() -> None:
    a = rand(2, 8, seed=1)
    b = 3.0 * a
    close(get_method("slerp")(a, [b], t=0.4), 0.6 * a + 0.4 * b)


# ---- Model Stock ---------------------------------------------------------------------------


def test_model_stock_interpolates_by_mean_cosine(family) -> None:
    base, srcs = family
    taus = [(s - base).flatten() for s in srcs]
    cos = [float(x @ y / (x.norm() * y.norm())) for i, x in enumerate(taus) for y in taus[i + 1:]]
    c = sum(cos) / len(cos)
    t = 3 * c / (1 + 2 * c)
    want = t * sum(srcs) / 3 + (1 - t) * base
    close(get_method("model_stock")(base, srcs), want)


# ---- dtypes ----------------------------------------------------------------------------------


def test_math_runs_in_float32_for_half_inputs_and_float64_for_double(family) -> None:
    base, srcs = family
    m = get_method("task_arithmetic")
    assert m(base.half(), [s.half() for s in srcs], weight=[1.0] * 3).dtype == torch.float32
    assert m(base, srcs, weight=[1.0] * 3).dtype == torch.float64
