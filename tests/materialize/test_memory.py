"""The memory plan: the minimum must fit the budget; the rest buys speed in a fixed order; bytes are counted right."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evomerge.config.search import load_config
from evomerge.errors import EvomergeError
from evomerge.materialize.memory import ModelShape, plan_for_config, plan_memory
from evomerge.run.records import PlanRecord, from_line, to_line
from evomerge.sources.store import TensorInfo

REPO = Path(__file__).resolve().parents[2]
GB = 10**9
MB = 10**6


def shape(entries: int = 100_000_000, layers: int = 4, k: int = 3) -> ModelShape:
    """A bf16 model of ``layers`` equal layers of ``entries`` each, plus an embedding as large as a layer."""
    infos = {"embed.weight": TensorInfo(torch.bfloat16, (entries,))}
    infos.update({f"layers.{i}.w": TensorInfo(torch.bfloat16, (entries,)) for i in range(layers)})
    groups = {"embed.weight": "embed", **{f"layers.{i}.w": f"layers.{i}" for i in range(layers)}}
    return ModelShape(infos, groups, k, (k + 1) * 2 * entries * (layers + 1))


def test_a_large_budget_caches_everything_on_the_cpu() -> None:
    plan = plan_memory(shape(), ["ties", "dare_ties"], device="cpu", workers=2, budget=100 * GB, out_dtype_size=None)
    assert (plan.sources, plan.thresholds, plan.draws) == ("shared", "sorted", "cached")
    entries = 5 * 100_000_000
    assert plan.worker_bytes["TIES cuts: sorted copies"] == 3 * entries * 8 + 12 * 100_000_000
    assert plan.worker_bytes["DARE draws: cached, 16 bits"] == 3 * entries * 2
    assert plan.worker_bytes["live model (host; one per worker)"] == entries * 2
    assert plan.per_node == 4 * entries * 2 + 2 * plan.per_worker  # the sources once, then each worker's share


def test_a_tight_budget_keeps_the_minimum_and_says_what_the_caches_would_need() -> None:
    plan = plan_memory(shape(), ["ties", "dare_ties"], device="cpu", workers=2, budget=2 * GB, out_dtype_size=None)
    assert (plan.thresholds, plan.draws) == ("histogram", "regenerated")
    assert plan.per_worker <= 2 * GB
    assert any("sorted copies would need" in n for n in plan.notes) and any("DARE draws" in n for n in plan.notes)


def test_draws_come_before_sorted_copies() -> None:
    budget = 4500 * MB  # live model (1 GB) + scratch + draws (3 GB) fit, sorted copies (12 GB) do not
    plan = plan_memory(shape(), ["ties", "dare_ties"], device="cpu", workers=1, budget=budget, out_dtype_size=None)
    assert (plan.thresholds, plan.draws) == ("histogram", "cached")


def test_eager_methods_size_the_scratch_by_their_declared_copies() -> None:
    one = plan_memory(shape(), ["ties"], device="cpu", workers=1, budget=100 * GB, out_dtype_size=None)
    pcb = plan_memory(shape(), ["ties", "pcb"], device="cpu", workers=1, budget=100 * GB, out_dtype_size=None)
    scratch = "scratch (one tensor's temporaries)"
    assert pcb.worker_bytes[scratch] - one.worker_bytes[scratch] == (5 * 3 + 1) * 100_000_000 * 4


def test_tsvm_keeps_its_products_else_its_components_else_recomputes_them() -> None:
    infos = {"a.weight": TensorInfo(torch.bfloat16, (300, 200)), "a.bias": TensorInfo(torch.bfloat16, (300,))}
    model = ModelShape(infos, {"a.weight": "layers.0", "a.bias": "layers.0"}, 3, 4 * 2 * 60_300)

    def plan(budget: int):
        return plan_memory(model, ["tsvm"], device="cpu", workers=1, budget=budget, out_dtype_size=None)

    roomy = plan(GB)
    assert roomy.policy.svds == "products" and roomy.worker_bytes["TSV-M: per-source products"] == 3 * 300 * 200 * 4
    middle = plan(roomy.per_worker - 1)
    assert middle.policy.svds == "components" and middle.worker_bytes["TSV-M: components"] == (300 + 200 + 1) * 198 * 4
    tight = plan(middle.per_worker - 1)
    assert tight.policy.svds == "recomputed" and any(n.startswith("TSV-M: recomputed per candidate")
                                                     for n in tight.notes)


def test_pcb_keeps_its_balances_when_they_fit_else_recomputes_them() -> None:
    roomy = plan_memory(shape(), ["pcb"], device="cpu", workers=1, budget=100 * GB, out_dtype_size=None)
    kept = roomy.worker_bytes["PCB: balances and their sorted copies"]
    assert roomy.policy.pcb == "kept" and kept >= 3 * 3 * 4 * sum(shape().floating())
    tight = plan_memory(shape(), ["pcb"], device="cpu", workers=1, budget=roomy.per_worker - 1, out_dtype_size=None)
    assert tight.policy.pcb == "recomputed" and "PCB: balances and their sorted copies" not in tight.worker_bytes
    assert any(n.startswith("PCB: recomputed per candidate") for n in tight.notes)


def test_a_budget_below_the_minimum_is_one_line_naming_the_items() -> None:
    with pytest.raises(EvomergeError) as info:
        plan_memory(shape(), ["ties"], device="cpu", workers=2, budget=500 * MB, out_dtype_size=None)
    message = str(info.value)
    assert "\n" not in message and "cannot hold the minimum" in message and "live model" in message
    assert "execution.memory_budget" in message


def test_gpu_sources_are_resident_when_they_fit_else_streamed_in_two_group_buffers() -> None:
    resident = plan_memory(shape(), ["ties"], device="cuda", workers=8, budget=80 * GB, out_dtype_size=None)
    assert resident.sources == "resident" and resident.worker_bytes["sources resident on the GPU"] == 4 * GB
    streamed = plan_memory(shape(), ["ties"], device="cuda", workers=8, budget=3 * GB, out_dtype_size=None)
    assert (streamed.sources == "streamed"
            and streamed.worker_bytes["sources streamed: two layer-group buffers"] == 2 * 4 * 200 * MB)
    assert streamed.draws == "regenerated" and streamed.thresholds == "histogram"


def test_default_budgets_come_from_the_host_or_the_gpu() -> None:
    host = plan_memory(shape(), ["task_arithmetic"], device="cpu", workers=2, budget=None, out_dtype_size=None,
                       available=20 * GB)
    assert host.budget_from == "host" and host.budget == (20 * GB - 4 * GB - 2 * GB - 2 * 500 * MB) // 2
    gpu = plan_memory(shape(), ["task_arithmetic"], device="cuda", workers=1, budget=None, out_dtype_size=None,
                      gpu_memory=80 * GB)
    assert gpu.budget_from == "device" and gpu.budget == int(80 * GB * 0.85)
    with pytest.raises(EvomergeError, match="memory_budget is needed: there is no CUDA device here"):
        plan_memory(shape(), ["ties"], device="cuda", workers=1, budget=None, out_dtype_size=None)
    with pytest.raises(EvomergeError, match="sources alone need"):
        plan_memory(shape(), ["ties"], device="cpu", workers=1, budget=None, out_dtype_size=None, available=3 * GB)


def test_the_merged_dtype_sizes_the_live_model() -> None:
    plan = plan_memory(shape(), ["task_arithmetic"], device="cpu", workers=1, budget=100 * GB, out_dtype_size=4)
    assert plan.worker_bytes["live model (host; one per worker)"] == 5 * 100_000_000 * 4


def test_the_8b_example_plans_from_its_stated_shape_and_fits_80gb_gpus() -> None:
    """configs/llama3-8b-example.yaml's folders do not exist here: its sources.shape describes the model."""
    cfg = load_config(REPO / "configs" / "llama3-8b-example.yaml")
    assert not cfg.sources.base.exists()
    plan = plan_for_config(cfg)
    assert plan.device == "cuda" and plan.workers == 8
    assert 16.0 * GB < plan.worker_bytes["live model (GPU; one per worker)"] < 16.1 * GB  # 8.03B bf16
    assert plan.per_worker <= plan.budget <= 80 * GB
    assert plan.thresholds == "histogram" and plan.draws == "regenerated"


def test_the_plan_record_reads_back_exactly() -> None:
    plan = plan_memory(shape(), ["ties", "dare_ties"], device="cpu", workers=2, budget=2 * GB, out_dtype_size=None)
    record = PlanRecord(plan, time=1.5)
    line = to_line(record)
    assert from_line(line) == record and json.loads(line)["type"] == "plan"
    assert from_line(line).plan.lines() == plan.lines()


def test_the_plan_notes_what_the_regmean_baseline_needs_without_charging_the_search_for_it() -> None:
    from evomerge.config.sizes import format_size

    infos = {"embed.weight": TensorInfo(torch.float32, (100, 64)),
             "layers.0.up.weight": TensorInfo(torch.float32, (256, 64)),
             "layers.0.down.weight": TensorInfo(torch.float32, (64, 256)),
             "norm.weight": TensorInfo(torch.float32, (64,))}
    model = ModelShape(infos, {n: "layers.0" for n in infos}, 2, 0)
    plan = plan_memory(model, ["ties"], device="cpu", workers=1, budget=GB, out_dtype_size=None)
    accumulators = 8 * (64 * 64 + 64 * 64 + 256 * 256)  # in² · 8 per matrix (the embedding's counted: an upper bound)
    grams = (2 + 4) * 256 * 256 * 4  # the K Grams of the widest input, Σ G̃ and one G̃ in float64
    files = 2 * (accumulators // 2)  # K = 2 sources, each its Grams in float32: half the float64 accumulators
    assert (f"RegMean (baseline, genes): its statistics pass {format_size(accumulators)} of float64 "
            f"accumulators per source on the worker's device, its merge {format_size(grams)} of Gram matrices beside "
            f"the scratch; up to {format_size(files)} of float32 files in the run's statistics/"
            ) in plan.notes
    assert not any("RegMean" in item for item in plan.worker_bytes)


def test_the_plan_notes_what_the_fisher_baseline_needs_without_charging_the_search_for_it() -> None:
    from evomerge.config.sizes import format_size

    infos = {"layers.0.up.weight": TensorInfo(torch.bfloat16, (256, 64)),
             "norm.weight": TensorInfo(torch.bfloat16, (64,))}
    model = ModelShape(infos, {n: "layers.0" for n in infos}, 2, 0)
    plan = plan_memory(model, ["ties"], device="cpu", workers=1, budget=GB, out_dtype_size=None)
    accumulators = 4 * (256 * 64 + 64)  # a float32 entry per parameter entry, whatever the models' dtype
    assert any(note.startswith(f"Fisher (baseline, genes): its statistics pass {format_size(accumulators)} "
                               "of float32 accumulators per source") for note in plan.notes)
    assert any(note.endswith(f"{format_size(2 * accumulators)} of float32 files in the run's statistics/")
               for note in plan.notes)  # one file per source (K = 2), as large as its accumulators
    assert not any("Fisher" in item for item in plan.worker_bytes)
