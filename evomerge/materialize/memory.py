"""The memory plan: what each worker keeps between candidates, where, and the bytes per worker and per node.

Per node, the sources exist once (K+1 models in their own dtype, shared by every worker there).
Per worker, the budget (``execution.memory_budget``, or a default from the device or the host) must
hold the minimum — the live model, the scratch of one tensor, and on a GPU two streamed layer
groups — or the run stops before it starts. What is left buys speed, in this order:

1. on a GPU, the sources resident in its memory instead of streamed per candidate;
2. DARE draws cached as 16 bits per entry and source instead of regenerated in the kernel (CPU
   only: a GPU regenerates them at memory speed);
3. sorted copies of |τ_k| for TIES cuts (8 bytes per entry and source) instead of histograms.

The plan never changes the merged tensors (the policies are exact alternatives), only speed and
memory. docs/MEMORY.md has the arithmetic and the reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

from evomerge.config.search import SearchConfig
from evomerge.config.sizes import format_size
from evomerge.errors import EvomergeError
from evomerge.materialize.device import STAGE, Placement
from evomerge.materialize.fused import (
    CachePolicy,
    Draws,
    PCBWork,
    SVDs,
    chunk_scratch_bytes,
    draw_cache_bytes,
    fused,
)
from evomerge.materialize.plan import DTYPES
from evomerge.materialize.thresholds import (
    Thresholds,
    cut_scratch_bytes,
    histogram_bytes,
    sort_scratch_bytes,
    sorted_bytes,
)
from evomerge.merge.methods.pcb import balances_bytes
from evomerge.merge.methods.regmean import scratch_bytes as regmean_scratch_bytes
from evomerge.merge.methods.tsvm import component_bytes, product_bytes
from evomerge.merge.registry import get_method
from evomerge.scoring.fisher import accumulator_bytes as fisher_accumulator_bytes
from evomerge.scoring.gram import accumulator_bytes
from evomerge.sources.arch import infos_from_config
from evomerge.sources.folder import read_config, read_tensor_infos
from evomerge.sources.pool import block_group
from evomerge.sources.store import TensorInfo, numel

Budget = Literal["config", "device", "host"]
GPU_SHARE = 0.85  # of a GPU's memory: the default budget (the rest is left to scoring's activations)
HOST_RESERVE = 2 * 10**9  # bytes of a node kept for Ray, interpreters and libraries (the driver's among them)
WORKER_RESERVE = 5 * 10**8  # bytes per worker process besides what the plan counts (torch, transformers, lm-eval)


@dataclass(frozen=True)
class ModelShape:
    """What a plan needs to know of the models: each tensor's shape and dtype, its layer group, K."""

    infos: Mapping[str, TensorInfo]  # the base's tensors (the model class's)
    groups: Mapping[str, str]  # tensor -> layer group at granularity 1 (the streaming unit)
    k: int  # sources besides the base
    source_bytes: int  # the base and every source, as stored

    @property
    def largest_tensor(self) -> int:
        return max(numel(i.shape) for i in self.infos.values())

    def floating(self) -> list[int]:
        """Entries of each mergeable tensor."""
        return [numel(i.shape) for i in self.infos.values() if i.dtype.is_floating_point]

    def model_bytes(self, dtype_size: int | None = None) -> int:
        """One model: as stored, or with every floating tensor at ``dtype_size`` bytes per entry."""
        return sum(numel(i.shape) * (dtype_size if dtype_size and i.dtype.is_floating_point else i.dtype.itemsize)
                   for i in self.infos.values())

    def largest_group(self) -> int:
        """Bytes of the largest layer group over the K+1 models (one streamed buffer)."""
        per: dict[str, int] = {}
        for name, info in self.infos.items():
            per[self.groups[name]] = per.get(self.groups[name], 0) + info.nbytes
        return max(per.values()) * (self.k + 1)


@dataclass(frozen=True)
class MemoryPlan:
    """The decisions and their bytes (plain data: recorded in the run log, sent to workers)."""

    device: str
    workers: int
    budget: int  # bytes per worker
    budget_from: Budget
    sources: Placement
    thresholds: Thresholds
    draws: Draws
    worker_bytes: Mapping[str, int] = field(default_factory=dict)  # item -> bytes, per worker
    node_bytes: Mapping[str, int] = field(default_factory=dict)  # item -> bytes, per node
    notes: tuple[str, ...] = ()  # what the alternatives would need
    svds: SVDs = "products"  # what TSV-M keeps (the default reads back plans recorded before TSV-M)
    pcb: PCBWork = "kept"  # what PCB keeps (the default reads back plans recorded before PCB kept anything)

    @property
    def policy(self) -> CachePolicy:
        return CachePolicy(self.sources, self.thresholds, self.draws, self.svds, self.pcb)

    @property
    def per_worker(self) -> int:
        return sum(self.worker_bytes.values())

    @property
    def per_node(self) -> int:
        return sum(self.node_bytes.values())

    def lines(self) -> list[str]:
        """The plan as printed at start, by ``search --plan`` and by ``status``."""
        where = {"config": "execution.memory_budget", "device": "the GPU's memory",
                 "host": "this host's available memory"}
        out = [f"memory plan: {self.workers} worker(s) on {self.device}, budget {format_size(self.budget)} per worker "
               f"(from {where[self.budget_from]})"]
        out += [f"  per node    {format_size(v):>9}  {k}" for k, v in self.node_bytes.items()]
        out += [f"  per worker  {format_size(v):>9}  {k}" for k, v in self.worker_bytes.items()]
        out += [f"  note        {n}" for n in self.notes]
        out.append(f"  total       {format_size(self.per_worker)} of {format_size(self.budget)} per worker; "
                   f"{format_size(self.per_node)} per node")
        return out


def plan_memory(shape: ModelShape, methods: Sequence[str], *, device: str, workers: int, budget: int | None,
                out_dtype_size: int | None, available: int | None = None, gpu_memory: int | None = None) -> MemoryPlan:
    """The plan for these models and methods; ``available`` (host) and ``gpu_memory`` feed the default budget."""
    gpu = device.startswith("cuda")
    families: set[str] = {meth.family.sparsify for meth in map(get_method, methods)
                          if meth.family is not None and fused(meth)}
    eager = [meth.eager_copies for meth in map(get_method, methods) if not fused(meth)]
    budget, budget_from = _budget(shape, device, workers, budget, available, gpu_memory)
    live = shape.model_bytes(out_dtype_size)
    scratch = _scratch(shape, max((a * shape.k + b for a, b in eager), default=0), "magnitude" in families)
    worker = {f"live model ({'GPU' if gpu else 'host'}; one per worker)": live,
              "scratch (one tensor's temporaries)": scratch}
    costs = _costs(shape, families)
    notes: list[str] = []
    if "magnitude" in families:
        worker["TIES cuts: histograms"] = costs["histograms"]
    placement: Placement = "shared"
    if gpu:
        placement = "resident" if live + scratch + costs["histograms"] + shape.source_bytes <= budget else "streamed"
        key = "sources resident on the GPU" if placement == "resident" else "sources streamed: two layer-group buffers"
        worker[key] = shape.source_bytes if placement == "resident" else 2 * shape.largest_group()
        if placement == "streamed":
            notes.append(f"resident sources would need {format_size(shape.source_bytes)} per worker")
    minimum = sum(worker.values())
    if minimum > budget:
        raise EvomergeError(
            f"the memory budget of {format_size(budget)} per worker cannot hold the minimum of {format_size(minimum)} "
            f"({', '.join(f'{k} {format_size(v)}' for k, v in worker.items())}): raise execution.memory_budget, use "
            "fewer workers per node, or a smaller dtype (genome.dtype)")
    matrices = [i.shape for i in shape.infos.values() if i.dtype.is_floating_point]
    products = _choose(worker, budget, "tsvm" in methods, "TSV-M: per-source products",
                       sum(product_bytes(m, shape.k) for m in matrices), notes, "components")
    parts = _choose(worker, budget, "tsvm" in methods and not products, "TSV-M: components",
                    sum(component_bytes(m, shape.k) for m in matrices), notes,
                    "recomputed per candidate (K + 2 SVDs per matrix)")
    balances = _choose(worker, budget, "pcb" in methods, "PCB: balances and their sorted copies",
                       sum(balances_bytes(n, shape.k) for n in shape.floating()) + sort_scratch_bytes(
                           shape.largest_tensor), notes, "recomputed per candidate (the eager operator)")
    if "random" in families and gpu:
        notes.append("DARE draws: regenerated in the kernel (on a GPU the hash runs at memory speed: no cache)")
    draws = _choose(worker, budget, "random" in families and not gpu, "DARE draws: cached, 16 bits", costs["draws"],
                    notes, "regenerated in the kernel")
    thresholds: Thresholds = "histogram"
    if "magnitude" in families:
        histograms = worker.pop("TIES cuts: histograms")
        if _choose(worker, budget, True, "TIES cuts: sorted copies", costs["sorted"], notes, "histograms"):
            thresholds = "sorted"
        else:
            worker["TIES cuts: histograms"] = histograms
    notes.append(regmean_note(shape))
    notes.append(fisher_note(shape))
    node = {f"sources, once per node ({shape.k + 1} models, shared by its workers)": shape.source_bytes}
    if gpu and placement == "streamed":
        node[f"pinned host chunks for streaming ({workers} workers × 2 × {format_size(STAGE)})"] = workers * 2 * STAGE
    if not gpu:
        node["workers' memory (the per-worker items below, all workers)"] = workers * sum(worker.values())
    return MemoryPlan(device, workers, budget, budget_from, placement, thresholds, "cached" if draws else "regenerated",
                      worker, node, tuple(notes),
                      svds="products" if products else "components" if parts else "recomputed",
                      pcb="kept" if balances else "recomputed")


def regmean_note(shape: ModelShape) -> str:
    """What RegMean adds while its statistics are computed and it merges — the report's baseline, or a search's genes
    that use it — noted, not charged to every search, over the 2-D weights (their input widths; the embedding
    counted too: an upper bound)."""
    widths = [i.shape[1] for i in shape.infos.values() if len(i.shape) == 2 and i.dtype.is_floating_point]
    if not widths:
        return "RegMean (baseline, genes): no matrices"
    accumulators = accumulator_bytes(widths)
    return (f"RegMean (baseline, genes): its statistics pass {format_size(accumulators)} of "
            "float64 accumulators per source on the worker's device, its merge "
            f"{format_size(regmean_scratch_bytes(max(widths), shape.k))} of Gram matrices beside the scratch; "
            f"up to {format_size(shape.k * accumulators // 2)} of float32 files in the run's statistics/")


def fisher_note(shape: ModelShape) -> str:
    """What Fisher averaging adds while its statistics are computed — the report's baseline, or a search's genes
    that use it — noted, not charged to every search: its statistics pass's float32 accumulator per parameter
    entry, beside one sequence's gradients and activations."""
    accumulators = fisher_accumulator_bytes(shape.floating())  # the files hold the same float32 entries per source
    return (f"Fisher (baseline, genes): its statistics pass {format_size(accumulators)} of float32 accumulators per "
            "source on the worker's device, plus one sequence's gradients (a model in the live dtype) and "
            f"activations; {format_size(shape.k * accumulators)} of float32 files in the run's statistics/")


def _budget(shape: ModelShape, device: str, workers: int, budget: int | None, available: int | None,
            gpu_memory: int | None) -> tuple[int, Budget]:
    """The configured budget, or the default: a share of the GPU, or the host's available memory after the sources."""
    if budget is not None:
        return budget, "config"
    if device.startswith("cuda"):
        if gpu_memory is None:
            raise EvomergeError("execution.memory_budget is needed: there is no CUDA device here to read the workers' "
                                "memory from; set it to what each worker's GPU may use, e.g. '64GB'")
        return int(gpu_memory * GPU_SHARE), "device"
    if available is None:
        raise EvomergeError("execution.memory_budget is needed: this host's available memory is unknown; set it, e.g. "
                            "'8GB'")
    spare = available - shape.source_bytes - HOST_RESERVE - workers * WORKER_RESERVE
    if spare <= 0:
        raise EvomergeError(f"this host has {format_size(available)} available but the sources alone need "
                            f"{format_size(shape.source_bytes)} (plus {format_size(HOST_RESERVE)} for Ray and the "
                            "interpreters): free memory, or run on a larger machine")
    return spare // workers, "host"


def _costs(shape: ModelShape, families: set[str]) -> dict[str, int]:
    """Bytes per worker of each cache alternative, over the mergeable tensors and K sources (each cache's own module
    gives its size)."""
    sizes = shape.floating()
    return {
        "histograms": shape.k * sum(histogram_bytes(n) for n in sizes) if "magnitude" in families else 0,
        "sorted": shape.k * sum(sorted_bytes(n) for n in sizes) + sort_scratch_bytes(shape.largest_tensor),
        "draws": shape.k * sum(draw_cache_bytes(n) for n in sizes),
    }


def _scratch(shape: ModelShape, eager_copies: int, trim: bool) -> int:
    """Temporaries of one tensor: eager chunks, the TIES flag pass, the eager operators' full-size float32 copies
    (the most any of them declares, ``MergeMethod.eager_copies``)."""
    largest = shape.largest_tensor
    out = chunk_scratch_bytes(shape.k)
    if trim:
        out += cut_scratch_bytes(largest)
    return out + eager_copies * largest * 4


def _choose(worker: dict[str, int], budget: int, wanted: bool, item: str, cost: int, notes: list[str],
            instead: str) -> bool:
    """Add ``item`` if wanted and it fits the budget's rest; else note what it would have needed."""
    if not wanted:
        return False
    if sum(worker.values()) + cost <= budget:
        worker[item] = cost
        return True
    notes.append(f"{item.split(':')[0]}: {instead} ({item.split(': ')[1]} would need {format_size(cost)} per worker)")
    return False


def plan_for_config(cfg: SearchConfig) -> MemoryPlan:
    """The plan of a search config, from the models' headers (or ``sources.shape``) and this machine's memory."""
    e = cfg.execution
    out = DTYPES[cfg.genome.dtype].itemsize if cfg.genome.dtype else None
    gpu = _gpu_memory(e.device, e.gpus_per_worker) if e.device.startswith("cuda") and e.budget_bytes is None else None
    return plan_memory(model_shape(cfg), cfg.genome.methods, device=e.device, workers=e.workers, budget=e.budget_bytes,
                       out_dtype_size=out, available=host_available(), gpu_memory=gpu)


def model_shape(cfg: SearchConfig) -> ModelShape:
    """The base's tensors from its headers where the folder exists, else from ``sources.shape``."""
    src = cfg.sources
    if src.base.is_dir():
        infos = read_tensor_infos(src.base, allow_pickle=src.allow_pickle, trust_remote_code=src.trust_remote_code)
        config = read_config(src.base)
        source_bytes = sum(i.nbytes for i in infos.values())
        for model in src.models:
            other = read_tensor_infos(model, allow_pickle=src.allow_pickle, trust_remote_code=src.trust_remote_code,
                                      used_by=src.base) if model.is_dir() else infos
            source_bytes += sum(other[n].nbytes if n in other else i.nbytes for n, i in infos.items())
    elif src.shape is not None:
        infos = infos_from_config(src.shape, src.trust_remote_code)
        config = dict(src.shape)
        source_bytes = (len(src.models) + 1) * sum(i.nbytes for i in infos.values())
    else:
        raise EvomergeError(f"model folder {src.base} does not exist: give the base's folder, or describe the model in "
                            "sources.shape (its config.json fields) to plan memory without the folders")
    group = block_group(config, list(infos))
    return ModelShape(infos, {n: group(n) for n in infos}, len(src.models), source_bytes)


def host_available() -> int | None:
    """Bytes of memory this host can still give (MemAvailable), or None where that is unknown."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _gpu_memory(device: str, gpus_per_worker: float) -> int | None:
    """A worker's share of the first visible GPU's memory, or None without CUDA here."""
    import torch

    if not torch.cuda.is_available():
        return None
    index = int(device.split(":")[1]) if ":" in device else 0
    return int(torch.cuda.get_device_properties(index).total_memory * min(gpus_per_worker or 1.0, 1.0))
