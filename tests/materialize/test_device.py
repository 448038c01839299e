"""Where the sources are when a worker merges: every placement streams the pool's own values, on the CPU and a GPU.

The CPU runs the shared, resident and streamed placements (resident and streamed on the CPU are the GPU code with
plain buffers); the tests marked for CUDA run the GPU's own branches — the copy once to the device, the double
buffer fed through pinned host chunks on a side stream, a merge on the GPU into a host tensor — when one is here.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch

import evomerge.materialize.device as device
from evomerge.materialize.device import DeviceSources
from evomerge.materialize.fused import CachePolicy, FastMerger
from evomerge.materialize.plan import MergePlan, TensorStep
from evomerge.merge.registry import get_method
from evomerge.sources.pool import SourcePool

SHAPES = {"model.embed_tokens.weight": (40, 24), "model.layers.0.mlp.up_proj.weight": (48, 24),
          "model.layers.1.self_attn.q_proj.weight": (24, 24), "model.layers.1.input_layernorm.weight": (24,),
          "model.norm.weight": (24,), "lm_head.weight": (40, 24)}
CANDIDATES = [("ties", {"weight": (1.0, -0.7, 0.4), "density": (0.37, 0.8, 0.05)}, {}),
              ("dare_ties", {"weight": (1.0, 0.8, -0.5), "density": (0.3, 0.9, 1.0)}, {"normalize": True}),
              ("linear", {"weight": (0.6, 0.3, 0.1)}, {})]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs the GPU branches)")


def make_pool(k: int = 3) -> SourcePool:
    """A base and k sources a little off it, in several layer groups (so streaming switches buffers)."""
    g = torch.Generator().manual_seed(0)
    base = {n: torch.randn(s, generator=g) for n, s in SHAPES.items()}
    sources = [{n: b + 0.01 * torch.randn(b.shape, generator=g) for n, b in base.items()} for _ in range(k)]
    return SourcePool.of([base, *sources], config={"num_hidden_layers": 2})


def plan_for(pool: SourcePool, method: str, per: dict, params: dict) -> MergePlan:
    return MergePlan(tuple(TensorStep(n, "g", get_method(method), per, params) for n in pool.tensor_names), 5, None)


def merged(pool: SourcePool, plan: MergePlan, merger: FastMerger, where: str = "cpu") -> dict[str, torch.Tensor]:
    """The merge written into fresh tensors on ``where``, returned on the CPU."""
    out = {n: torch.empty(t.shape, dtype=t.dtype, device=where) for n, t in pool.base.tensors.items()}
    assert merger.materialize(plan, out) == []
    return {n: t.cpu() for n, t in out.items()}


def assert_streams_the_pool(sources: DeviceSources, pool: SourcePool) -> None:
    """Groups come in the order asked, each tensor as [base, source 1 … K] with the pool's values (compared while
    the group is current: a streamed buffer is refilled for the group after next)."""
    wanted = list(reversed(range(len(sources.groups))))
    seen = []
    for g, tensors in sources.stream(wanted):
        seen.append(g)
        for name, views in tensors.items():
            assert [v.device.type for v in views] == [sources.device.type] * len(pool.models)
            pairs = zip(views, pool.models, strict=True)
            assert all(torch.equal(v.cpu(), m.tensors[name]) for v, m in pairs), (g, name)
    assert seen == wanted and sum(len(b.entries) for b in pool.base.blocks) == len(pool.tensor_names)


@pytest.mark.parametrize("placement", ["shared", "resident", "streamed"])
def test_every_placement_on_the_cpu_streams_the_pools_values(placement: device.Placement) -> None:
    pool = make_pool()
    sources = DeviceSources(pool, torch.device("cpu"), placement)
    assert len(sources.groups) > 2
    assert (sources._resident is not None) == (placement == "resident")
    assert_streams_the_pool(sources, pool)


def test_resident_sources_on_the_cpu_merge_as_the_shared_ones() -> None:
    pool = make_pool()
    for candidate in CANDIDATES:
        plan = plan_for(pool, *candidate)
        want = merged(pool, plan, FastMerger(pool, compile=False, chunk=64))
        got = merged(pool, plan, FastMerger(pool, policy=CachePolicy("resident"), compile=False, chunk=64))
        assert all(torch.equal(got[n], want[n]) for n in want), candidate[0]


def test_a_non_contiguous_destination_is_merged_aside_and_copied_back() -> None:
    """A live parameter that is a transposed view cannot take the kernel's flat writes: the merge goes to a
    temporary and is copied into it."""
    pool = make_pool()
    plan = plan_for(pool, *CANDIDATES[0])
    want = plan.materialize(pool)
    out = {n: torch.empty(t.shape[::-1]).t() if t.dim() == 2 else torch.empty_like(t) for n, t in want.items()}
    assert not out["lm_head.weight"].is_contiguous()
    assert FastMerger(pool, compile=False, chunk=64).materialize(plan, out) == []
    for name, tensor in want.items():
        assert torch.equal(out[name], tensor), name


@cuda
@pytest.mark.parametrize("placement", ["resident", "streamed"])
def test_gpu_placements_stream_the_pools_values(placement: device.Placement, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamed: pinned chunks of 512 bytes, so every block goes through the ring of two chunks several times."""
    monkeypatch.setattr(device, "STAGE", 512)
    pool = make_pool()
    sources = DeviceSources(pool, torch.device("cuda"), placement)
    assert_streams_the_pool(sources, pool)


def test_the_shared_host_copy_is_refused_to_a_gpu() -> None:
    with pytest.raises(ValueError, match="resident or streamed"):
        DeviceSources(make_pool(), torch.device("cuda"), "shared")


@cuda
@pytest.mark.parametrize("placement", ["resident", "streamed"])
@pytest.mark.parametrize("where", ["cuda", "cpu"], ids=["into GPU tensors", "into host tensors, copied back"])
def test_gpu_merges_equal_the_reference(placement: device.Placement, where: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "STAGE", 512)
    pool = make_pool()
    merger = FastMerger(pool, policy=CachePolicy(placement, "sorted", "regenerated"), device="cuda", compile=False)
    for candidate in CANDIDATES:
        plan = plan_for(pool, *candidate)
        got, want = merged(pool, plan, merger, where), plan.materialize(pool)
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=2e-6, atol=2e-6, msg=lambda m, name=name: f"{name}: {m}")


@cuda
def test_compiled_gpu_kernels_equal_the_reference(ran_compiled: Callable[..., None]) -> None:
    pool = make_pool()
    merger = FastMerger(pool, policy=CachePolicy("resident", "histogram", "cached"), device="cuda", compile=True)
    for candidate in CANDIDATES:
        plan = plan_for(pool, *candidate)
        got, want = merged(pool, plan, merger, "cuda"), plan.materialize(pool)
        for name, tensor in want.items():
            torch.testing.assert_close(got[name], tensor, rtol=2e-6, atol=2e-6, msg=lambda m, name=name: f"{name}: {m}")
    ran_compiled("gta", "linear")
