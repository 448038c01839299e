"""The fused fast path equals the eager reference operators within float32 rounding.

Edge cases (shapes, densities, weights, ties) run the chunk functions eagerly (``compile=False``),
which is the same code the compiled path runs; one case per kernel variant runs compiled, so
inductor's output is checked against the reference too (compiled once per module: a few compiles).
Small chunks (``chunk=64``) make every tensor span several chunks, so cuts that straddle chunks are hit.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

from evomerge.materialize.fused import CachePolicy, FastMerger, merge_tensors
from evomerge.materialize.plan import MergePlan, TensorStep
from evomerge.merge.draws import SCALE, uniform_draws
from evomerge.merge.methods import pcb, tsvm
from evomerge.merge.registry import get_method
from evomerge.sources.pool import SourcePool

SHAPES = {"w.big": (37, 53), "w.vec": (97,), "w.tiny": (3,), "w.one": (1,), "w.cube": (4, 5, 6)}


def make_pool(k: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> SourcePool:
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=g).to(dtype) for n, s in SHAPES.items()}
    base["int.buf"] = torch.arange(6)
    sources = []
    for _ in range(k):
        sources.append({n: (v + 0.1 * torch.randn(v.shape, generator=g).to(dtype)) if v.is_floating_point()
                        else v.clone()
                        for n, v in base.items()})
    return SourcePool.of([base, *sources])


def make_plan(pool: SourcePool, method: str, source_params: dict, params: dict | None = None, *,
              seed: int = 3, dtype: torch.dtype | None = None) -> MergePlan:
    m = get_method(method)
    steps = tuple(
        TensorStep(n, "g", m if pool.is_mergeable(n) else None, {k: tuple(v) for k, v in source_params.items()},
                   params or {})
        for n in pool.tensor_names
    )
    return MergePlan(steps, seed, dtype)


def check(pool: SourcePool, plan: MergePlan, **options) -> None:
    want = plan.materialize(pool)
    got = merge_tensors(plan, pool, **options)
    for name, ref in want.items():
        assert got[name].dtype == ref.dtype, name
        torch.testing.assert_close(got[name], ref, rtol=2e-6, atol=2e-6,
                                   msg=lambda m, name=name: f"{plan.steps[0].method.name} {name}: {m}")


EAGER = dict(compile=False, chunk=64)

CASES = [
    ("linear", {"weight": [0.6, 0.3, 0.1]}, {}),
    ("linear", {"weight": [1.0, -1.0, 0.0]}, {}),  # zero weight sum: left undivided
    ("linear", {"weight": [0.6, 0.9, -0.2]}, {"normalize": False}),
    ("task_arithmetic", {"weight": [0.7, 0.5, -0.2]}, {"lam": 0.9}),
    ("task_arithmetic", {"weight": [0.7, 0.5, -0.2]}, {"lam": 1.3, "normalize": True}),
    ("ties", {"weight": [1.0, 0.8, 0.5], "density": [0.5, 0.6, 0.3]}, {}),
    ("ties", {"weight": [1.0, -0.8, 0.5], "density": [1.0, 0.01, 0.2]}, {"lam": 0.7}),
    ("ties", {"weight": [1.0, 0.8, 0.5], "density": [0.9, 0.999, 1.0]}, {"normalize": False}),
    ("dare_linear", {"weight": [0.7, 0.5, -0.2], "density": [0.5, 1.0, 0.05]}, {"lam": 1.1}),
    ("dare_ties", {"weight": [1.0, 0.8, -0.5], "density": [0.3, 0.9, 1.0]}, {}),
    ("dare_ties", {"weight": [1.0, 0.8, 0.5], "density": [0.5, 0.5, 0.01]}, {"normalize": True, "lam": 0.5}),
]


@pytest.mark.parametrize("method,source_params,params", CASES)
def test_fused_chunks_equal_the_reference(method: str, source_params: dict, params: dict) -> None:
    pool = make_pool(3)
    check(pool, make_plan(pool, method, source_params, params), **EAGER)


@pytest.mark.parametrize("method,source_params", [
    ("ties", {"weight": [1.0, 0.5], "density": [0.4, 0.7]}),
    ("dare_ties", {"weight": [0.5, 0.5], "density": [0.4, 0.7]}),
    ("task_arithmetic", {"weight": [0.5, -1.5]}),
])
def test_two_sources_and_float64(method: str, source_params: dict) -> None:
    for dtype in (torch.float32, torch.float64):
        pool = make_pool(2, seed=5, dtype=dtype)
        check(pool, make_plan(pool, method, source_params), **EAGER)


def test_output_dtype_cast_once() -> None:
    pool = make_pool(3, seed=1)
    plan = make_plan(pool, "ties", {"weight": [1.0, 0.8, 0.5], "density": [0.5, 0.6, 0.3]}, dtype=torch.bfloat16)
    check(pool, plan, **EAGER)


def test_tied_magnitudes_at_the_cut_keep_the_lowest_flat_indices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many equal |τ| (quantized deltas) so the keep count ends inside a group of ties, and sign ties."""
    monkeypatch.setattr("evomerge.materialize.thresholds.HISTOGRAM_MIN", 0)  # histograms even for tiny tensors
    pool = make_pool(3, seed=2)
    g = torch.Generator().manual_seed(9)
    for name, b in pool.base.tensors.items():
        if not b.is_floating_point():
            continue
        for s in pool.sources:
            steps = torch.randint(-2, 3, b.shape, generator=g).float() * 0.25
            s.tensors[name].copy_(b + steps)
        # exact sign ties: source 1 is the mirror image of source 0 (w equal): Σ w τ = 0 → elected +
        pool.sources[1].tensors[name].copy_(2 * b - pool.sources[0].tensors[name])
    for d in ([0.5, 0.5, 0.3], [0.33, 0.71, 0.05], [1.0, 1.0, 0.5]):
        plan = make_plan(pool, "ties", {"weight": [1.0, 1.0, 0.4], "density": d})
        check(pool, plan, **EAGER)
        check(pool, plan, **EAGER, policy=CachePolicy(thresholds="histogram", draws="regenerated"))
    check(pool, make_plan(pool, "dare_ties", {"weight": [1.0, 1.0, 0.4], "density": [0.5, 0.5, 0.5]}), **EAGER)


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_with_cached_angle(t: float) -> None:
    pool = make_pool(1, seed=4)
    pool.sources[0].tensors["w.cube"].copy_(pool.base.tensors["w.cube"] * 2)  # colinear: linear fallback
    check(pool, make_plan(pool, "slerp", {}, {"t": t}), **EAGER)


@pytest.mark.parametrize("method,k,source_params,params", [
    ("breadcrumbs", 3, {"weight": [1.0, 0.5, 0.2], "density": [0.5, 0.6, 0.7]}, {}),
    ("sce", 3, {}, {"select_topk": 0.5}),
    ("karcher", 3, {}, {"max_iter": 3}),
    ("nuslerp", 2, {"weight": [0.4, 1.1]}, {"nuslerp_flatten": False}),
    ("multislerp", 3, {"weight": [0.4, 1.1, 0.2]}, {}),
    ("tsvm", 3, {"weight": [1.0, -0.4, 0.8]}, {"lam": 0.9}),
])
def test_other_methods_fall_back_to_the_eager_operator(method: str, k: int, source_params: dict, params: dict) -> None:
    pool = make_pool(k, seed=4)
    check(pool, make_plan(pool, method, source_params, params), **EAGER)


def test_cache_is_filled_once_and_reused() -> None:
    pool = make_pool(3)
    merger = FastMerger(pool, **EAGER)
    plan = make_plan(pool, "ties", {"weight": [1.0, 0.8, 0.5], "density": [0.5, 0.6, 0.3]})
    out = {n: torch.empty_like(t) for n, t in pool.base.tensors.items()}
    assert merger.materialize(plan, out) == []
    first = merger.cache_bytes()
    assert first == 3 * 8 * sum(t.numel() for t in pool.base.tensors.values() if t.is_floating_point()
                                and t.numel() > 1)
    merger.materialize(make_plan(pool, "ties", {"weight": [0.1, 0.2, 0.5], "density": [0.9, 0.1, 0.3]}), out)
    assert merger.cache_bytes() == first


def test_a_source_that_left_a_tensor_alone_has_no_sorted_copy_and_merges_as_the_reference() -> None:
    pool = make_pool(3)
    pool.sources[1].tensors["w.big"].copy_(pool.base.tensors["w.big"])  # τ_1 = 0 there: an untouched embedding
    merger = FastMerger(pool, **EAGER)
    for density in ([0.5, 0.6, 0.3], [0.9, 0.2, 0.7]):
        plan = make_plan(pool, "ties", {"weight": [1.0, 0.8, 0.5], "density": density})
        got = merged_by(merger, plan)
        for name, want in plan.materialize(pool).items():
            assert torch.equal(got[name], want), name
    sorted_entries = 3 * sum(t.numel() for t in pool.base.tensors.values() if t.is_floating_point() and t.numel() > 1)
    assert merger.cache_bytes() == 8 * (sorted_entries - 37 * 53)


@pytest.mark.parametrize("options", [EAGER, dict(compile=True, chunk=256)], ids=["eager", "compiled"])
def test_cached_draws_are_each_sources_uniform_draws(options: dict, ran_compiled: Callable[..., None]) -> None:
    """Three sources: one pair hashed for both, then a pair of one; bytes that span chunks."""
    pool = make_pool(3)
    merger = FastMerger(pool, **options)
    n = 37 * 53
    cached, _ = merger._draw_inputs(11, "w.big", 3, n, torch.device("cpu"))
    for k, rows in enumerate(cached):
        bits = rows[0].to(torch.float32) * 256 + rows[1].to(torch.float32)
        assert torch.equal((bits + 0.5) * SCALE, uniform_draws(11, "w.big", k, (n,))), k
    if options["compile"]:
        ran_compiled("draw_bytes")


def test_a_pair_cached_for_one_source_gets_its_second_when_asked() -> None:
    merger = FastMerger(make_pool(3), **EAGER)
    merger._draw_inputs(11, "w.vec", 1, 97, torch.device("cpu"))
    cached, _ = merger._draw_inputs(11, "w.vec", 2, 97, torch.device("cpu"))
    for k, rows in enumerate(cached):
        bits = rows[0].to(torch.float32) * 256 + rows[1].to(torch.float32)
        assert torch.equal((bits + 0.5) * SCALE, uniform_draws(11, "w.vec", k, (97,))), k


@pytest.mark.parametrize("svds", ["products", "components"])
def test_tsvm_keeps_its_source_only_work_and_only_weighs_it_per_candidate(svds: str) -> None:
    pool = make_pool(3, seed=5)
    merger = FastMerger(pool, policy=CachePolicy(svds=svds), **EAGER)  # type: ignore[arg-type]
    out = {n: torch.empty_like(t) for n, t in pool.base.tensors.items()}
    assert merger.materialize(make_plan(pool, "tsvm", {"weight": [1.0, 1.0, 1.0]}), out) == []
    cached = merger.cache_bytes()
    size = {"products": tsvm.product_bytes, "components": tsvm.component_bytes}[svds]
    assert cached == size(SHAPES["w.big"], 3)  # the one matrix (R = 3 · (37 // 3) components)
    second = make_plan(pool, "tsvm", {"weight": [0.2, 1.5, -0.3]}, {"lam": 0.7})
    assert merger.materialize(second, out) == [] and merger.cache_bytes() == cached
    for name, want in second.materialize(pool).items():
        torch.testing.assert_close(out[name], want, rtol=2e-6, atol=2e-6)


def test_tsvm_merges_the_same_tensors_whatever_it_keeps() -> None:
    pool = make_pool(3, seed=5)
    plan = make_plan(pool, "tsvm", {"weight": [0.2, 1.5, -0.3]}, {"lam": 0.7})
    outs = []
    for svds in ("products", "components", "recomputed"):
        merger = FastMerger(pool, policy=CachePolicy(svds=svds), **EAGER)  # type: ignore[arg-type]
        outs.append({n: torch.empty_like(t) for n, t in pool.base.tensors.items()})
        assert merger.materialize(plan, outs[-1]) == []
    assert merger.cache_bytes() == 0  # recomputed keeps nothing
    assert all(torch.equal(outs[0][n], other[n]) for other in outs[1:] for n in outs[0])


def merged_by(merger: FastMerger, plan: MergePlan) -> dict[str, torch.Tensor]:
    out = {n: torch.empty_like(t) for n, t in merger.pool.base.tensors.items()}
    assert merger.materialize(plan, out) == []
    return out


def test_pcb_keeps_its_balances_and_merges_each_candidate_as_the_eager_operator_does() -> None:
    pool = make_pool(3, seed=6)
    merger = FastMerger(pool, **EAGER)  # chunks of 64: every tensor's columns in several pieces
    merged_by(merger, make_plan(pool, "pcb", {"weight": [1.0, 0.7, 1.2], "density": [0.2, 0.5, 0.9]}))
    kept = merger.cache_bytes()
    assert kept == sum(pcb.balances_bytes(t.numel(), 3) for t in pool.base.tensors.values() if t.is_floating_point())
    second = make_plan(pool, "pcb", {"weight": [0.3, -0.5, 1.0], "density": [0.9, 0.05, 1.0]}, {"lam": 0.8})
    got = merged_by(merger, second)
    assert merger.cache_bytes() == kept
    for name, want in second.materialize(pool).items():
        assert torch.equal(got[name], want), name


def test_pcb_merges_the_same_tensors_kept_or_recomputed() -> None:
    pool = make_pool(2, seed=7)
    plan = make_plan(pool, "pcb", {"weight": [0.6, 1.1], "density": [0.3, 0.7]}, {"lam": 1.2})
    recomputing = FastMerger(pool, policy=CachePolicy(pcb="recomputed"), **EAGER)
    outs = [merged_by(FastMerger(pool, **EAGER), plan), merged_by(recomputing, plan)]
    assert recomputing.cache_bytes() == 0
    assert all(torch.equal(outs[0][n], outs[1][n]) for n in outs[0])


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("options", [EAGER, dict(compile=True, chunk=256)], ids=["eager", "compiled"])
def test_non_finite_results_are_reported(value: float, options: dict, ran_compiled: Callable[..., None]) -> None:
    pool = make_pool(3)
    pool.sources[2].tensors["w.big"][5, 7] = value
    pool.sources[1].tensors["w.vec"][5] = value
    out = {n: torch.empty_like(t) for n, t in pool.base.tensors.items()}
    for method in ("task_arithmetic", "ties"):
        plan = make_plan(pool, method, {"weight": [1.0, 1.0, 1.0], "density": [1.0, 1.0, 1.0]})
        assert FastMerger(pool, **options).materialize(plan, out) == ["w.big", "w.vec"]
    if options["compile"]:
        ran_compiled("gta")


COMPILED = [
    ("linear", {"weight": [0.6, 0.3, 0.1]}, {}),
    ("task_arithmetic", {"weight": [0.7, 0.5, -0.2]}, {"lam": 0.9}),
    ("ties", {"weight": [1.0, -0.8, 0.5], "density": [0.5, 0.01, 1.0]}, {}),
    ("dare_linear", {"weight": [0.7, 0.5, -0.2], "density": [0.5, 1.0, 0.05]}, {}),
    ("dare_ties", {"weight": [1.0, 0.8, -0.5], "density": [0.3, 0.9, 1.0]}, {"normalize": True}),
    ("pcb", {"weight": [1.0, 0.7, 1.2], "density": [0.2, 0.5, 0.9]}, {"lam": 1.1}),
]


@pytest.mark.parametrize("t", [0.0, 0.05, 10.0])  # nothing swapped, some, every entry
def test_nearswap_kernel_gives_the_operators_tensors_exactly(t: float) -> None:
    pool = make_pool(1, seed=4)
    pool.sources[0].tensors["w.vec"][:5] = pool.base.tensors["w.vec"][:5]  # equal entries: the distance floor
    plan = make_plan(pool, "nearswap", {}, {"t": t})
    got = merge_tensors(plan, pool, **EAGER)
    assert all(torch.equal(got[name], want) for name, want in plan.materialize(pool).items())


def test_compiled_nearswap_equals_the_reference(ran_compiled: Callable[..., None]) -> None:
    pool = make_pool(1, seed=4)
    check(pool, make_plan(pool, "nearswap", {}, {"t": 0.05}), compile=True, chunk=256)
    ran_compiled("nearswap")


def test_compiled_slerp_equals_the_reference(ran_compiled: Callable[..., None]) -> None:
    pool = make_pool(1, seed=8)
    check(pool, make_plan(pool, "slerp", {}, {"t": 0.35}), compile=True, chunk=256)
    ran_compiled("linear")


@pytest.mark.parametrize("method,source_params,params", COMPILED)
def test_compiled_kernels_equal_the_reference(method: str, source_params: dict, params: dict,
                                              ran_compiled: Callable[..., None]) -> None:
    pool = make_pool(3, seed=7)
    check(pool, make_plan(pool, method, source_params, params), compile=True, chunk=256)
    ran_compiled(method if method in ("linear", "pcb") else "gta")
