"""The memory plan never changes results: the same candidate gives the same tensors whatever is cached or where.

Every ``CachePolicy`` — sources read in place, copied to the device once (resident) or streamed group by
group, TIES cuts from sorted copies or from histograms, DARE draws cached or regenerated in the kernel —
must write bit-identical tensors, and those must equal the eager reference operators. The fixtures are bfloat16 sources
whose deltas are a few ulps (so the trim cut falls inside large groups of tied magnitudes, the hard
case for histograms), several layer groups (so streaming switches buffers), and histograms forced
on for these small tensors.
"""

from __future__ import annotations

import itertools
from typing import Callable

import pytest
import torch

from evomerge.materialize.fused import CachePolicy, FastMerger
from evomerge.materialize.kernels import TIE_BLOCK
from evomerge.materialize.plan import MergePlan, TensorStep
from evomerge.materialize.thresholds import HistogramCuts, SortedCuts, Trim, tie_index_bytes
from evomerge.merge.registry import get_method
from evomerge.merge.sparsify import keep_count
from evomerge.sources.pool import SourcePool

SHAPES = {
    "model.embed_tokens.weight": (40, 24), "model.layers.0.mlp.up_proj.weight": (48, 24),
    "model.layers.0.input_layernorm.weight": (24,), "model.layers.1.self_attn.q_proj.weight": (24, 24),
    "model.norm.weight": (24,), "lm_head.weight": (40, 24),
}
POLICIES = [CachePolicy(s, t, d) for s, t, d in itertools.product(("shared", "resident", "streamed"),
                                                                    ("sorted", "histogram"), ("cached", "regenerated"))]
CANDIDATES = [
    ("ties", {"weight": [1.0, -0.7, 0.4], "density": [0.37, 0.8, 0.05]}, {}),
    ("ties", {"weight": [0.5, 0.5, 0.5], "density": [1.0, 0.5, 0.0]}, {"lam": 0.8}),
    ("dare_ties", {"weight": [1.0, 0.8, -0.5], "density": [0.3, 0.9, 1.0]}, {"normalize": True}),
    ("dare_linear", {"weight": [0.7, 0.5, -0.2], "density": [0.5, 1.0, 0.05]}, {"lam": 1.1}),
    ("task_arithmetic", {"weight": [0.7, 0.5, -0.2]}, {"lam": 0.9}),
]


@pytest.fixture(autouse=True)
def histograms_for_small_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("evomerge.materialize.thresholds.HISTOGRAM_MIN", 0)


@pytest.fixture(params=["bf16 deltas", "float32 deltas"])
def pool(request: pytest.FixtureRequest) -> SourcePool:
    """bf16 sources a few ulps off the base (cut bins of one value, large groups of ties) and float32 ones (cut bins
    of many values): the two ways a histogram finds a cut."""
    return bf16_pool() if request.param == "bf16 deltas" else float_pool()


def bf16_pool(k: int = 3, seed: int = 0) -> SourcePool:
    """Sources = base + a few bfloat16 ulps: many exactly tied |τ| at any cut."""
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=g).to(torch.bfloat16) for n, s in SHAPES.items()}
    sources = []
    for _ in range(k):
        sources.append({n: (b.float() * (1 + torch.randint(-3, 4, b.shape, generator=g) * 2.0**-8)).to(torch.bfloat16)
                        for n, b in base.items()})
    return SourcePool.of([base, *sources], config={"num_hidden_layers": 2})


def float_pool(k: int = 3, seed: int = 0) -> SourcePool:
    g = torch.Generator().manual_seed(seed)
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    return SourcePool.of([base, *({n: b + 0.01 * torch.randn(b.shape, generator=g) for n, b in base.items()}
                                  for _ in range(k))],
                         config={"num_hidden_layers": 2})


def plan_for(pool: SourcePool, method: str, source_params: dict, params: dict) -> MergePlan:
    m = get_method(method)
    per = {key: tuple(v) for key, v in source_params.items()}
    return MergePlan(tuple(TensorStep(n, "g", m, per, params) for n in pool.tensor_names), seed=11, dtype=None)


def merged(pool: SourcePool, plan: MergePlan, merger: FastMerger) -> dict[str, torch.Tensor]:
    out = {n: torch.empty_like(t) for n, t in pool.base.tensors.items()}
    assert merger.materialize(plan, out) == []
    return out


def assert_float64_reference(pool: SourcePool, candidate: tuple, got: dict[str, torch.Tensor]) -> None:
    """``got`` is the reference operators' merge computed in float64 (from float64 copies of the bfloat16 sources),
    rounded once to bfloat16: float32's rounding errors lie far below half a bfloat16 step, so for these inputs
    every entry rounds the same (a tolerance of one bfloat16 step would hide a wrong λ on deltas of a few steps)."""
    wide = SourcePool.of([{n: t.double() for n, t in m.tensors.items()} for m in pool.models],
                         config={"num_hidden_layers": 2})
    for name, want in plan_for(wide, *candidate).materialize(wide).items():
        rounded = want.to(got[name].dtype)
        assert torch.equal(got[name], rounded), f"{candidate[0]} {name}: {int((got[name] != rounded).sum())} entries"


@pytest.mark.parametrize("method,source_params,params", CANDIDATES)
def test_every_policy_writes_the_same_tensors_as_the_reference(pool: SourcePool, method: str, source_params: dict,
                                                                params: dict) -> None:
    plan = plan_for(pool, method, source_params, params)
    reference = plan.materialize(pool)
    for policy in POLICIES:
        got = merged(pool, plan, FastMerger(pool, policy=policy, compile=False, chunk=64))
        for name, want in reference.items():
            assert torch.equal(got[name], want), f"{policy} {method} {name}"


def test_compiled_kernels_give_the_same_tensors_under_every_policy(ran_compiled: Callable[..., None]) -> None:
    pool = bf16_pool(seed=1)
    plans = [plan_for(pool, *c) for c in CANDIDATES[:3]]
    first = [merged(pool, p, FastMerger(pool, compile=False)) for p in plans]
    for policy in (CachePolicy("shared", "histogram", "regenerated"), CachePolicy("streamed", "sorted", "cached")):
        merger = FastMerger(pool, policy=policy, compile=True)
        for candidate, plan, want in zip(CANDIDATES[:3], plans, first, strict=True):
            got = merged(pool, plan, merger)
            assert all(torch.equal(got[n], want[n]) for n in want), policy
            assert_float64_reference(pool, candidate, got)
    ran_compiled("gta", "magnitude_keys", "value_rows")  # the merge and the histogram's counting passes


def test_caches_are_reused_across_candidates_and_sized_by_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real rule: histograms for tensors of 2**16 entries and more, sorted copies below
    g = torch.Generator().manual_seed(3)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(512, 256, generator=g),
            "model.norm.weight": torch.randn(256, generator=g)}
    pool = SourcePool.of([base, *({n: t + 0.01 * torch.randn(t.shape, generator=g) for n, t in base.items()}
                                  for _ in range(3))])
    sorted_merger = FastMerger(pool, policy=CachePolicy(thresholds="sorted", draws="cached"), compile=False)
    compact = FastMerger(pool, policy=CachePolicy(thresholds="histogram", draws="regenerated"), compile=False)
    for merger in (sorted_merger, compact):
        for c in CANDIDATES[:3]:
            merged(pool, plan_for(pool, *c), merger)
    entries = sum(t.numel() for t in pool.base.tensors.values())
    assert sorted_merger.cache_bytes() == 3 * entries * (8 + 2)  # sorted values + int32 indices, 2 bytes of draws
    small = 3 * 256 * 8  # the norm: below the histogram size, sorted
    per_source = (1 << 16) * 16 + tie_index_bytes(512 * 256)  # per used key: the key and a count; the tie index
    assert small < compact.cache_bytes() < small + 3 * per_source
    before = compact.cache_bytes()
    merged(pool, plan_for(pool, *CANDIDATES[0]), compact)
    assert compact.cache_bytes() == before


N_TIED = 3 * TIE_BLOCK + 123


def tied_sources() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Base and two sources whose |τ| take three values (many ties at every cut), over 3 whole blocks of
    ``TIE_BLOCK`` entries and a shorter last one."""
    g = torch.Generator().manual_seed(4)
    base = torch.randint(-8, 8, (N_TIED,), generator=g) * 0.125
    return base, [base + torch.randint(-2, 3, (N_TIED,), generator=g) * 0.25 for _ in range(2)]


def reference_keeps(base: torch.Tensor, source: torch.Tensor, density: float) -> torch.Tensor:
    """Top-d trimming by brute force: the max(1, int(d·n)) largest |τ| (mergekit's count), ties by lower flat index,
    ranked in float64 by a stable sort (nothing of ``thresholds``)."""
    tau = (source - base).abs().double()
    n = tau.numel()
    keep = n if density >= 1 else 0 if density <= 0 else max(1, int(density * n))
    kept = torch.zeros(n, dtype=torch.bool)
    kept[torch.sort(-tau, stable=True).indices[:keep]] = True
    return kept


def cut_keeps(cut: Trim, base: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The entries a cut keeps, as the fused kernel applies it: |τ| > low, or |τ| == low at flat index < p."""
    tau = (source - base).abs()
    return (tau > cut.low) | ((tau == cut.low) & (torch.arange(tau.numel()) < cut.p))


def cuts_agree(base: torch.Tensor, sources: list[torch.Tensor], candidates: list[list[float]]) -> HistogramCuts:
    """Asserts that histogram cuts equal sorted-copy cuts for every candidate's densities (eager, whole tensors), and
    keep exactly the entries of the brute-force reference; returns the ``HistogramCuts``."""
    histogram, reference = HistogramCuts(compiles=lambda n: False, chunk=lambda n, compiled: n), SortedCuts()
    for densities in candidates:
        cuts = histogram.cuts("w", densities, base, sources)
        assert cuts == reference.cuts("w", densities, base, sources), densities
        for cut, source, density in zip(cuts, sources, densities, strict=True):
            assert torch.equal(cut_keeps(cut, base, source), reference_keeps(base, source, density)), (cut, density)
    return histogram


def tied_cuts_agree(densities: list[float]) -> HistogramCuts:
    """``cuts_agree`` on ``tied_sources`` with densities d and 1 − d."""
    return cuts_agree(*tied_sources(), [[d, 1 - d] for d in densities])


def test_tie_cuts_scanned_from_either_end_agree_with_sorted_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tie index: the last kept tie is found by counting, over several scan calls, from the start or from the
    end, into a shorter last block."""
    monkeypatch.setattr("evomerge.materialize.thresholds.TIE_KEYS", 0)
    monkeypatch.setattr("evomerge.materialize.thresholds.TIE_SCAN", TIE_BLOCK)
    histogram = tied_cuts_agree([0.05, 0.2, 0.3, 0.5, 0.7, 0.9])
    assert all(c.ties is None for c in histogram._counts.values())


def test_tie_cuts_from_the_tie_index_agree_with_sorted_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two most frequent values of each source are indexed per block (the others are scanned): every cut inside
    a group of ties, in any block, is the sorted copies' cut."""
    monkeypatch.setattr("evomerge.materialize.thresholds.TIE_KEYS", 2)
    histogram = tied_cuts_agree([x / 40 for x in range(1, 40)])
    indexes = [c.ties for c in histogram._counts.values()]
    assert all(index is not None and len(index.rows) == 2 and index.ends.shape[1] == 4 for index in indexes)


def test_tie_index_cuts_at_the_last_tie_of_a_block_and_the_first_of_the_next() -> None:
    base, sources = tied_sources()
    tau = (sources[0] - base).abs()
    value = torch.mode(tau).values  # the most frequent: indexed
    above = int((tau > value).sum())
    block_ends = (tau == value).view(-1)[: 3 * TIE_BLOCK].view(3, TIE_BLOCK).sum(1).cumsum(0)
    densities = [(above + int(c) + extra + 0.5) / N_TIED for c in block_ends for extra in (0, 1)]
    assert [keep_count(d, N_TIED) - above for d in densities[:2]] == [int(block_ends[0]), int(block_ends[0]) + 1]
    histogram = cuts_agree(base, sources[:1], [[d] for d in densities])
    assert next(iter(histogram._counts.values())).ties is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuts_in_bins_of_many_values_agree_with_sorted_copies(dtype: torch.dtype) -> None:
    """Deltas of full precision: a cut bin holds many values, found by flagging its entries (both float widths)."""
    g = torch.Generator().manual_seed(6)
    base = torch.randn(5000, generator=g, dtype=dtype)
    sources = [base + 0.01 * torch.randn(5000, generator=g, dtype=dtype) for _ in range(3)]
    cuts_agree(base, sources, [[d, 1 - d, d / 2] for d in (0.1, 0.37, 0.5, 0.83)])
