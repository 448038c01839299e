"""Fast materialization: a candidate costs about one read of the sources and one write of the model.

The eager operators in ``evomerge/merge/methods`` are the reference: readable, float64-tested and
matched against mergekit, but each builds several full-size temporaries and TIES ranks every
tensor for every candidate. A worker evaluates thousands of candidates over the same sources, so
``FastMerger`` does source-only work once and, per candidate and tensor, runs one fused kernel
(``kernels.py``) that reads θ0 and every θ_k where they are and writes straight into the live
parameter on the worker's device. What it keeps between candidates is its ``CachePolicy``, chosen
by the memory plan (``memory.py``; docs/MEMORY.md); the policy changes speed and memory, never the
tensors (``tests/materialize/test_policy.py``):

- ``sources``: ``shared`` — the CPU kernels read the pool's aligned blocks in place (on a node, the
  one copy every worker maps); ``resident`` — copied to the GPU once; ``streamed`` — copied per
  candidate, one layer group at a time (``device.py``);
- ``thresholds``: TIES cuts from sorted copies of |τ_k| or from histograms (``thresholds.py``);
- ``draws``: DARE draws ``cached`` (16 bits per entry and source) or ``regenerated`` inside the
  kernel from the entry's flat index (``merge/draws.py``: the same bits either way).

τ_k itself is never stored: the kernel forms θ_k − θ0 in registers, which moves exactly the bytes a
cached τ_k would and saves K model-sized copies; the values are those of ``task_vectors``. Per
tensor, SLERP's cos Ω (a scalar) is kept.

Compiled kernels run over whole tensors (one loop, no temporaries: smaller chunks only add
OpenMP regions); eager ones over ``CHUNK`` elements at a time. By default (``compile=None``) only
tensors of at least ``COMPILE_MIN`` elements use compiled kernels, so tiny models never wait for a
compile; ``True`` compiles everything, ``False`` runs the same functions eagerly.

Supported here: ``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``slerp``, ``nearswap``.
``tsvm`` keeps its source-only work as the policy's ``svds`` says: each matrix's K decorrelated task
matrices P_k (``products``: a candidate is the linear kernel over θ0 and the P_k, as task arithmetic), or the
SVDs' results they come from (``components``: a candidate also pays the products, 2R flops per entry), or
nothing (``recomputed``: the SVDs per candidate, as a one-pass merge needs them). The three give the same
tensors; its vectors (biases, norms) run the eager operator. ``pcb`` keeps, as the policy's ``pcb`` says, each
tensor's clipped task vectors and balances with their sorted copies (``kept``: a candidate is a lookup of its cuts
and one pass over them, ``methods/pcb.py``'s steps 4–5 a chunk at a time) or nothing (``recomputed``: the eager
operator); both give the same tensors. Every other method (``sce``, ``karcher``, …) runs its eager operator on the
host copy (``MergePlan.merge_tensor``): the same numbers as ``evomerge merge``, at the eager operator's cost per
candidate.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, MutableMapping

import torch
from torch import Tensor

from evomerge.materialize.device import DeviceSources, Placement
from evomerge.materialize.kernels import (
    GTA_PARAMS,
    LINEAR_PARAMS,
    NEARSWAP_PARAMS,
    PCB_PARAMS,
    chunk_kernel,
    compile_works,
)
from evomerge.materialize.plan import MergePlan, TensorStep
from evomerge.materialize.thresholds import Thresholds, make_trim_cuts
from evomerge.merge.draws import draw_key
from evomerge.merge.methods import pcb as pcb_method
from evomerge.merge.methods import slerp as slerp_method
from evomerge.merge.methods import tsvm as tsvm_method
from evomerge.merge.registry import MergeMethod
from evomerge.merge.sparsify import compute_dtype, task_vectors, weight_sum_divisor
from evomerge.sources.pool import SourcePool

CHUNK = 1 << 20  # elements per eager pass: (K+2) × 4 MiB of float32 stays near the caches
COMPILE_MIN = 1 << 16  # smaller tensors run the chunk functions eagerly: no compile for tiny models
FUSED_SPARSIFY = ("none", "magnitude", "random")  # task-vector families with a fused kernel
FUSED_OTHERS = ("linear", "slerp", "nearswap")  # methods outside the task-vector families with one
KEEPS_WORK = ("tsvm", "pcb")  # methods without a fused kernel whose source-only work a worker keeps
Draws = Literal["cached", "regenerated"]
SVDs = Literal["products", "components", "recomputed"]  # what TSV-M keeps per matrix (``methods/tsvm.py``)
PCBWork = Literal["kept", "recomputed"]  # what PCB keeps per tensor (``methods/pcb.py``)
DRAW_LEVELS = 1 << 16  # draw bits are 16-bit integers


@dataclass(frozen=True)
class CachePolicy:
    """What a worker keeps between candidates and where its sources are (the memory plan decides)."""

    sources: Placement = "shared"
    thresholds: Thresholds = "sorted"
    draws: Draws = "cached"
    svds: SVDs = "products"
    pcb: PCBWork = "kept"


def fused(method: MergeMethod) -> bool:
    """Whether this module has a fused kernel for ``method`` (else the eager operator runs)."""
    if method.family is not None:
        return method.family.sparsify in FUSED_SPARSIFY
    return method.name in FUSED_OTHERS


# glibc's mallopt parameters: freed blocks at least this large go back to the operating system.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _RETURN_FROM = -1, -3, 1 << 20


@functools.cache
def return_freed_memory() -> None:
    """Make glibc hand freed blocks of 1 MB and more back to the operating system, once per process.

    By default glibc raises its mmap threshold up to 32 MB as large blocks are freed, so the first
    candidate's per-tensor temporaries (histogram counting, chunk buffers) land in the heap and stay
    there: measured on a 1.1B bf16 family (K=3), a worker's first TIES candidate left it 11.8 GB more
    resident (2.2 GB of it the live model's own pages), 2.2 GB with this call. Elsewhere than glibc
    this does nothing.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _RETURN_FROM)
    libc.mallopt(_M_TRIM_THRESHOLD, _RETURN_FROM)


class FastMerger:
    """A worker's merger: source-only work once, one fused pass per tensor and candidate (see the module docstring)."""

    def __init__(self, pool: SourcePool, *, policy: CachePolicy = CachePolicy(), device: str | torch.device = "cpu",
                 compile: bool | None = None, chunk: int | None = None):
        """``chunk``: elements per kernel call; None = whole tensors for compiled kernels, CHUNK for eager ones."""
        if chunk is not None and (chunk <= 0 or chunk & (chunk - 1)):
            raise ValueError("chunk must be a power of two (keeps every chunk's start aligned)")
        return_freed_memory()
        self.pool, self.policy, self.compile, self.chunk = pool, policy, compile, chunk
        self.device = torch.device(device)
        self.sources = DeviceSources(pool, self.device, policy.sources)
        self.trims = make_trim_cuts(policy.thresholds, compiles=self._compiles, chunk=self._chunk)
        self._draws: dict[tuple[int, str, int], Tensor] = {}
        self._cos: dict[str, Tensor] = {}
        self._tsvm: dict[str, tsvm_method.Components | list[Tensor]] = {}
        self._pcb: dict[str, pcb_method.Balances] = {}
        self._group = {e.name: g for g, block in enumerate(pool.base.blocks) for e in block.entries}

    def cache_bytes(self) -> int:
        """Bytes of source-only work kept between candidates (sorted copies or histograms, draws, TSV-M's and PCB's)."""
        parts = [t for c in self._tsvm.values() for t in (c if isinstance(c, list) else (c.u, c.s, c.v))]
        kept = sum(t.numel() * t.element_size() for t in [*self._draws.values(), *parts])
        return self.trims.cache_bytes() + kept + sum(b.bytes() for b in self._pcb.values())

    def supports(self, step: TensorStep) -> bool:
        return step.method is not None and fused(step.method)

    def _keeps_work(self, step: TensorStep, base: Tensor) -> bool:
        """Whether this merger keeps source-only work for ``step`` (TSV-M's matrices, PCB as its policy says)."""
        assert step.method is not None
        if step.method.name not in KEEPS_WORK:
            return False
        return base.dim() == 2 if step.method.name == "tsvm" else self.policy.pcb == "kept" and base.numel() > 0

    # -- per candidate ---------------------------------------------------------------------------------

    def materialize(self, plan: MergePlan, params: Mapping[str, Tensor] | MutableMapping[str, Tensor]) -> list[str]:
        """Write every tensor of ``plan`` that ``params`` has into it in place; return the non-finite tensors' names.

        Steps whose method the fused path does not cover run the eager operator. Tensors ``params``
        lacks (checkpoint keys the model class does not use) are skipped.
        """
        by_group: dict[int, list[TensorStep]] = {}
        for step in plan.steps:
            if step.name in params:
                by_group.setdefault(self._group[step.name], []).append(step)
        bad: list[str] = []
        with torch.no_grad():
            for g, tensors in self.sources.stream(sorted(by_group)):
                for step in by_group[g]:
                    if not self._merge_step(step, plan, params[step.name], tensors[step.name]):
                        bad.append(step.name)
        return bad

    def _merge_step(self, step: TensorStep, plan: MergePlan, dst: Tensor, inputs: list[Tensor]) -> bool:
        """One tensor into ``dst``; False when a merged value is not finite."""
        if step.method is None:  # integer buffers: the base's
            dst.copy_(inputs[0])
            return True
        if self.supports(step) or self._keeps_work(step, inputs[0]):
            return self._merge_into(step, plan, dst, inputs)
        tensor = plan.merge_tensor(step, self.pool)
        dst.copy_(tensor)
        return bool(torch.isfinite(tensor).all())

    def _merge_into(self, step: TensorStep, plan: MergePlan, dst: Tensor, inputs: list[Tensor]) -> bool:
        assert step.method is not None
        base, sources = inputs[0], inputs[1:]
        direct = dst.is_contiguous() and dst.device == base.device  # else: merge on this device, then copy
        target = dst if direct else torch.empty(dst.shape, dtype=dst.dtype, device=base.device)
        flat = [base.reshape(-1), *(s.reshape(-1) for s in sources)]
        if step.method.name in ("linear", "slerp"):
            flags = self._linear(step, plan, target.view(-1), flat)
        elif step.method.name == "nearswap":
            flags = self._nearswap(step, plan, target.view(-1), flat)
        elif step.method.name == "tsvm":
            flags = self._tsvm_matrix(step, plan, target.view(-1), inputs)
        elif step.method.name == "pcb":
            flags = self._pcb_tensor(step, plan, target.view(-1), inputs)
        else:
            flags = self._gta(step, plan, target.view(-1), flat)
        if target is not dst:
            dst.copy_(target)
        return bool(torch.stack(flags).all()) if flags else True

    def _linear(self, step: TensorStep, plan: MergePlan, out: Tensor, flat: list[Tensor]) -> list[Any]:
        """linear (a weighted mean of the sources) and SLERP (a weighted sum of base and source 0)."""
        assert step.method is not None
        k_count = len(flat) - 1
        glob = {**step.method.globals, **step.params}
        if step.method.name == "slerp":
            dt = compute_dtype(flat[0])
            coef_a, coef_b = slerp_method.coefficients(self._slerp_cos(step.name, flat[0], flat[1]),
                                                       float(glob.get("t", 0.5)))
            coefficients = torch.cat([coef_a.flatten(), coef_b.flatten()])  # as weights of base and source 0
            params = LINEAR_PARAMS.pack(dt, coef_a.device, weight=coefficients, divisor=1.0)
            inputs = flat[:2]
        else:
            dt = compute_dtype(flat[1])
            weight = self._per_source(step, k_count).get("weight", [1.0] * k_count)
            total = float(sum(weight))
            divisor = weight_sum_divisor(total) if glob.get("normalize", True) else 1.0
            params = LINEAR_PARAMS.pack(dt, self.device, weight=weight, divisor=divisor)
            inputs = flat[1:]
        kernel, ranges = self._kernel("linear", out.numel())
        plan_dtype = plan.dtype or flat[0].dtype
        return [kernel(out[a:b], [s[a:b] for s in inputs], params.to(out.device), plan_dtype) for a, b in ranges]

    def _nearswap(self, step: TensorStep, plan: MergePlan, out: Tensor, flat: list[Tensor]) -> list[Any]:
        """NearSwap of base and its one source: elementwise, one pass."""
        assert step.method is not None
        dt = compute_dtype(flat[0])
        params = NEARSWAP_PARAMS.pack(dt, out.device, t=float({**step.method.globals, **step.params}["t"]))
        kernel, ranges = self._kernel("nearswap", out.numel())
        return [kernel(out[a:b], flat[0][a:b], flat[1][a:b], params, plan.dtype or flat[0].dtype) for a, b in ranges]

    def _gta(self, step: TensorStep, plan: MergePlan, out: Tensor, flat: list[Tensor]) -> list[Any]:
        """The task-vector family: trim cuts or DARE draws, then one fused pass per chunk."""
        assert step.method is not None and step.method.family is not None
        family, base, sources = step.method.family, flat[0], flat[1:]
        k_count, n, dt, dev = len(sources), base.numel(), compute_dtype(flat[0]), base.device
        trim, dare = family.sparsify == "magnitude", family.sparsify == "random"
        per = self._per_source(step, k_count)
        glob = {**step.method.globals, **step.params}
        weight, density = per.get("weight", [1.0] * k_count), per.get("density", [1.0] * k_count)
        normalize = bool(glob.get("normalize"))
        divisor = weight_sum_divisor(float(sum(weight))) if normalize else 1.0  # as ``combine``
        third, cuts = [1.0] * k_count, [n] * k_count
        trims = self.trims.cuts(step.name, density, base, sources) if trim else []
        if dare:
            cuts = [draw_threshold(d, dt) for d in density]
            third = [1.0 if d >= 1 or d <= 0 else d for d in density]
        cut = torch.tensor(cuts, dtype=torch.int64, device=dev)
        draws, keys = (self._draw_inputs(plan.seed, step.name, k_count, n, dev) if dare
                       else ([], torch.zeros(1, dtype=torch.int64, device=dev)))
        kernel, ranges = self._kernel("gta", n, splits=[t.p for t in trims])  # each side of every cut p: no index
        plan_dtype = plan.dtype or base.dtype
        lam = float(glob.get("lam", 1.0))
        flags = []
        lowered = [below(t.low, dt) for t in trims]  # where a range keeps the ties at low (before the cut p)
        for a, e in ranges:
            lows = [t.low if a >= t.p else under for t, under in zip(trims, lowered, strict=True)] or [0.0] * k_count
            params = GTA_PARAMS.pack(dt, dev, weight=weight, low=lows, dare_divisor=third, lam=lam, divisor=divisor,
                                     normalize=float(normalize))
            flags.append(kernel(out[a:e], base[a:e], [s[a:e] for s in sources], [row[a:e] for x in draws for row in x],
                                params, cut, torch.tensor(a, dtype=torch.int64, device=dev), keys, plan_dtype, trim,
                                dare, family.consensus))
        return flags

    # -- source-only work ------------------------------------------------------------------------------

    def _draw_inputs(self, seed: int, name: str, k_count: int, n: int,
                     device: torch.device) -> tuple[list[Tensor], Tensor]:
        """(cached draws, pair keys): the cache's draw bytes, or none and the keys the kernel regenerates them from."""
        keys = torch.tensor([draw_key(seed, name, k) for k in range(0, k_count, 2)], dtype=torch.int64, device=device)
        if self.policy.draws == "regenerated":
            return [], keys
        if any(s != seed for s, _, _ in self._draws):  # a new run seed: the old draws are dead
            self._draws = {key: v for key, v in self._draws.items() if key[0] == seed}
        for k in range(0, k_count, 2):  # a pair at a time: one hash gives both sources' draws
            pair = min(2, k_count - k)
            if any((seed, name, k + s) not in self._draws for s in range(pair)):
                for s, rows in enumerate(self._cached_draws(keys[k // 2], pair, n, device)):
                    self._draws[(seed, name, k + s)] = rows
        return [self._draws[(seed, name, k)] for k in range(k_count)], keys

    def _cached_draws(self, key: Tensor, sources: int, n: int, device: torch.device) -> list[Tensor]:
        """The draw bits of a pair's first ``sources`` (1 or 2) sources for a tensor of n entries, each as [high
        bytes, low bytes] (uint8): views of one buffer, filled by the ``draw_bytes`` kernel (compiled like the
        merge kernels: the eager int64 arithmetic took ~100 ns an entry, most of a first DARE candidate)."""
        out = torch.empty(2 * sources, n, dtype=torch.uint8, device=device)
        kernel, ranges = self._kernel("draw_bytes", n)
        for a, b in ranges:
            kernel(list(out[:, a:b]), torch.tensor(a, dtype=torch.int64, device=device), key)
        return [out[2 * s : 2 * s + 2] for s in range(sources)]

    def _tsvm_matrix(self, step: TensorStep, plan: MergePlan, out: Tensor, inputs: list[Tensor]) -> list[Any]:
        """TSV-M of one matrix: θ0 + Σ_k (λ w_k) P_k by the linear kernel over θ0 and the P_k the policy keeps
        (or makes now, from kept or fresh components)."""
        assert step.method is not None
        base, k = inputs[0], len(inputs) - 1
        held = self._tsvm.get(step.name)
        if held is None:
            held = tsvm_method.components(task_vectors(base, inputs[1:]))
            if self.policy.svds == "products":
                held = [tsvm_method.product(held, i) for i in range(k)]
            if self.policy.svds != "recomputed":
                self._tsvm[step.name] = held
        products = held if isinstance(held, list) else [tsvm_method.product(held, i) for i in range(k)]
        lam = float({**step.method.globals, **step.params}["lam"])
        weight = [1.0, *(lam * w for w in self._per_source(step, k)["weight"])]
        params = LINEAR_PARAMS.pack(compute_dtype(base), self.device, weight=weight, divisor=1.0)
        flat = [base.reshape(-1), *(p.reshape(-1) for p in products)]
        kernel, ranges = self._kernel("linear", out.numel())
        return [kernel(out[a:b], [x[a:b] for x in flat], params.to(out.device), plan.dtype or base.dtype)
                for a, b in ranges]

    def _pcb_tensor(self, step: TensorStep, plan: MergePlan, out: Tensor, inputs: list[Tensor]) -> list[Any]:
        """PCB of one tensor from its kept balances: the cuts looked up, then θ0 + λ · steps 4–5 by the pcb kernel."""
        assert step.method is not None
        base, k = inputs[0], len(inputs) - 1
        held = self._pcb.get(step.name)
        if held is None:
            held = self._pcb[step.name] = pcb_method.Balances.of(base, inputs[1:])
        per = self._per_source(step, k)
        params = PCB_PARAMS.pack(held.clipped.dtype, held.clipped.device, weight=per["weight"],
                                 cut=held.cuts(per["density"]), high=held.highs(),
                                 lam=float({**step.method.globals, **step.params}["lam"]))
        flat, dtype = base.reshape(-1), plan.dtype or base.dtype
        kernel, ranges = self._kernel("pcb", out.numel())
        return [kernel(out[a:b], flat[a:b], [row[a:b] for row in held.clipped], [row[a:b] for row in held.balance],
                       params, dtype)
                for a, b in ranges]

    def _slerp_cos(self, name: str, base: Tensor, source: Tensor) -> Tensor:
        """cos Ω of base and source 0 over the flattened tensor, [1, 1], exactly as ``methods/slerp.py``."""
        if name not in self._cos:
            dt = compute_dtype(base)
            self._cos[name] = slerp_method.cos_angle(base.to(dt).reshape(1, -1), source.to(dt).reshape(1, -1))
        return self._cos[name]

    @staticmethod
    def _per_source(step: TensorStep, k_count: int) -> dict[str, list[float]]:
        assert step.method is not None
        per = {k: [float(v)] * k_count for k, v in step.method.per_source.items()}
        per.update({k: [float(x) for x in v] for k, v in step.source_params.items()})
        return per

    def _compiles(self, n: int) -> bool:
        """Compiled kernel for a tensor of n elements? (n = 1 would only add a size-1 specialization.)"""
        wanted = n > 1 and (n >= COMPILE_MIN if self.compile is None else self.compile)
        return wanted and compile_works(self.device)

    def _chunk(self, n: int, compiled: bool) -> int:
        """Entries per kernel call: whole tensors compiled (no temporaries to bound), CHUNK eager."""
        return self.chunk or (max(n, 1) if compiled else CHUNK)

    def _kernel(self, name: str, n: int, splits: list[int] | None = None
                ) -> tuple[Callable[..., Any], list[tuple[int, int]]]:
        """Chunk kernel ``name`` for a tensor of n entries, compiled as ``_compiles`` says, and the entry ranges of
        its calls (``_chunks``)."""
        compiled = self._compiles(n)
        return chunk_kernel(name, compiled), self._chunks(n, compiled, splits)

    def _chunks(self, n: int, compiled: bool, splits: list[int] | None = None) -> list[tuple[int, int]]:
        """Kernel calls' ranges: chunks of ``_chunk`` entries, also split at every point of ``splits`` inside (0, n)."""
        points = sorted({*range(0, n, self._chunk(n, compiled)), *(p for p in splits or [] if 0 < p < n), n})
        return list(zip(points[:-1], points[1:], strict=True))


def below(low: float, dt: torch.dtype) -> float:
    """The largest value of ``dt`` under ``low``: |τ| > below(low) keeps |τ| >= low, so a range of entries that
    keeps the ties at ``low`` needs no flat-index test."""
    return float(torch.nextafter(torch.tensor(low, dtype=dt), torch.tensor(-math.inf, dtype=dt)))


def draw_threshold(density: float, dt: torch.dtype) -> int:
    """The integer t with bits < t exactly when u = (bits + 0.5)/2**16 < d, d as the reference holds it (in ``dt``);
    d ≥ 1 keeps every entry (τ_k whole), d ≤ 0 none."""
    if density >= 1:
        return DRAW_LEVELS
    d = float(torch.tensor(density, dtype=dt))  # the value the reference compares with, exactly
    return max(0, math.ceil(d * DRAW_LEVELS - 0.5))  # exact: scaling by 2**16, then a half, in float64


def draw_cache_bytes(n: int) -> int:
    """Bytes of one (tensor, source) draw cache of n entries (``FastMerger._cached_draws``: a high and a low byte)."""
    return 2 * n


def chunk_scratch_bytes(k_count: int) -> int:
    """Bytes of the eager kernels' temporaries over one ``CHUNK`` of K sources: K + 4 float32 chunks at most."""
    return (k_count + 4) * CHUNK * 4


def merge_tensors(plan: MergePlan, pool: SourcePool, **options: Any) -> dict[str, Tensor]:
    """The whole merged model as new tensors (for tests; a worker writes in place, export streams shards)."""
    merger = FastMerger(pool, **options)
    out = {}
    for step in plan.steps:
        base = pool.base.tensors[step.name]
        out[step.name] = torch.empty(base.shape, dtype=(plan.dtype if step.method is not None else None) or base.dtype)
    merger.materialize(plan, out)
    return out
