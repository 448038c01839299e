"""Fast materialization: a candidate costs about one read of the sources and one write of the model.

The eager operators in ``evomerge/merge/methods`` are the reference: readable, float64-tested and
matched against mergekit, but each builds several full-size temporaries (τ stacked, masks, weighted
sums) and TIES sorts every tensor for every candidate. A worker evaluates thousands of candidates over
the same sources, so this module splits the work as docs/DESIGN.md, "Materialization", says:

**Once per worker** (``FastMerger``'s cache, filled lazily the first time a tensor needs it, then kept):

- per tensor and source, |τ_k| flattened and stably sorted ascending, values and flat indices
  (int32 when they fit), for trimming methods: the TIES threshold for any density d is then a lookup,
  ``asc[n − keep]``, plus two binary searches (no ``kthvalue``/``sort`` per candidate); the indices
  settle ties at the cut (below);
- per tensor and source, the DARE uniform draws u for the run's seed (``uniform_draws``, float32),
  so every candidate reads the same common random numbers instead of generating them again;
- per tensor, SLERP's cos Ω between base and source (a scalar: the angle depends on the models only,
  so a candidate's t only changes two coefficients and SLERP becomes one weighted-sum pass).

- per tensor, the pool's base and source tensors moved once into fresh, 64-byte-aligned, anonymous
  memory, put back into the pool's dicts (same values, same memory: the old storage is released).
  ``safetensors.load_file`` returns views into a private mmap of the file, at arbitrary 4-byte
  offsets: inductor copies a misaligned input on every call (measured 2–5× the floor instead of ~1×),
  and file-backed pages read ~20% slower and can be dropped by the kernel under memory pressure and
  read back from disk (on this VM a model-sized pass over such pages ran at ~1.7 GB/s vs 9 GB/s).

τ_k itself is *not* cached: the per-candidate pass reads θ0 and θ_k (resident in the ``SourcePool``
anyway) and forms θ_k − θ0 in registers, which costs exactly the same memory traffic as reading a
cached τ_k (K + 1 tensors either way) and saves K model-sized float32 copies. The values are bit for
bit those of ``task_vectors`` (one float subtraction, no contraction).

**Memory.** Resident for a run: the pool (base + K sources, as loaded: K+1 models) plus, for
trimming methods, K sorted-magnitude arrays and K index arrays (float32 + int32: 2K models), plus, for
DARE, K float32 draw arrays (K models). TIES alone: (3K+1)× the model (DESIGN §9 counts (2K+1)×:
base + τ + sorted values; here τ is not stored but the sorted indices are); TIES and DARE in one run:
(4K+1)×. Pass ``cache=False`` for
models where that does not fit: sorted magnitudes and draws are then recomputed for each candidate
and tensor (one tensor's worth of transient memory; TIES then costs a sort per tensor again, DARE a
draw — several times slower, never wrong).

**Per candidate**, for each tensor: the threshold lookups (once per tensor, from the *whole* tensor's
sorted magnitudes), then one pass over the flattened tensor. The chunk function fuses τ, the mask
(threshold compare, or draw < d), the DARE rescale, the sign election, the weighted sum, the
normalization, λ, the casts and the non-finite check, and writes straight into the destination
parameter (``out.copy_`` inside the function). Compiled, it is one C++ loop with no intermediate
buffer at all (inductor's output code: a single ``cpp_fused_…`` kernel, the output stored in place),
so it runs over the whole tensor in one call: smaller chunks gain nothing and cost one OpenMP
parallel region each, which on a loaded machine (threads waiting for a time slice) was measured at
3× slower with 2**20-element chunks than with whole tensors. Run eagerly, the same function makes
chunk-sized temporaries, so the eager kernels go over ``CHUNK`` (2**20) elements at a time. Chunks
start at multiples of a power of two, so every slice stays aligned.

**Compilation.** The chunk functions are plain torch code, run through ``torch.compile`` (inductor,
``dynamic=True``) once per process: one compile per (kernel, K, dtypes) serves every tensor shape
(``-ffp-contract=off`` is inductor's default, so no FMA changes the rounding of the sign election).
By default (``compile=None``) only tensors of at least ``COMPILE_MIN`` elements use the compiled
kernels, so tiny models (the zoo, tests) never wait for a compile they cannot amortize; ``True``
compiles for every tensor, ``False`` runs the very same functions eagerly (debugging, tests).

**Ties at the trim cut.** The eager ``magnitude_mask`` ranks equal magnitudes by flat index. When the
keep count ends inside a group of equal |τ| — common: fine-tuned float32 deltas are quantized to the
ulp of the weights, bfloat16 ones far more — the stable sort's index array gives the flat index p of
the last kept entry of that group in O(1) (within a group of equal values a stable ascending sort
lists flat indices in increasing order), and the pass keeps tied entries with index < p: the result
is identical to the reference. (Finding p with a pass over the tensor instead was measured at 4×
the whole TIES candidate on a 220M-parameter model.)

Supported here: ``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``slerp``. Every other
method goes through its eager operator (``MergePlan.merge_tensor``); results equal the eager operators'
within float32 rounding (``tests/merge/test_fast.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, MutableMapping, Sequence

import torch
from torch import Tensor

from evomerge.materialize.plan import MergePlan, TensorStep
from evomerge.merge.draws import uniform_draws
from evomerge.merge.methods import slerp as slerp_method
from evomerge.merge.registry import MergeMethod, get_method
from evomerge.merge.sparsify import compute_dtype, keep_count
from evomerge.sources.pool import SourcePool

CHUNK = 1 << 20  # elements per fused pass: (K+2) × 4 MiB of float32 stays near the caches
COMPILE_MIN = 1 << 16  # smaller tensors run the chunk functions eagerly: no compile for tiny models
FUSED_SPARSIFY = ("none", "magnitude", "random")  # task-vector families with a fused kernel
FUSED_OTHERS = ("linear", "slerp")  # methods outside the task-vector families with one


# ---------------------------------------------------------------------------------------------------
# Chunk kernels: plain torch on 1-D slices, compiled once per process. ``params`` holds the candidate's
# numbers in the compute dtype (a tensor, so new values never trigger a recompile).


def _linear_chunk(out: Tensor, sources: list[Tensor], params: Tensor, plan_dtype: torch.dtype) -> Tensor:
    """Σ w_k θ_k / divisor; params = [w_0 … w_{K−1}, divisor] (divisor 1 when not normalizing)."""
    k_count = len(sources)
    dt = params.dtype
    acc = sources[0].to(dt) * params[0]
    for k in range(1, k_count):
        acc = acc + sources[k].to(dt) * params[k]
    merged = (acc / params[k_count]).to(plan_dtype)
    out.copy_(merged)
    return torch.isfinite(merged).all()


def _gta_chunk(
    out: Tensor, base: Tensor, sources: list[Tensor], draws: list[Tensor], params: Tensor, cut: Tensor,
    plan_dtype: torch.dtype, trim: bool, dare: bool, consensus: bool,
) -> Tensor:
    """Generalized task arithmetic over one chunk, as ``sparsify.combine`` after the masks.

    params = [w (K), low or dare threshold (K), dare divisor (K), λ, divisor, normalize flag];
    ``cut`` (int64, K): tied magnitudes equal to ``low`` are kept where the chunk index < cut.
    """
    k_count = len(sources)
    dt = params.dtype
    b = base.to(dt)
    weighted = []
    for k in range(k_count):
        tau = sources[k].to(dt) - b
        if trim:
            mag = tau.abs()
            low = params[k_count + k]
            index = torch.arange(tau.shape[0], device=tau.device)
            keep = (mag > low) | ((mag == low) & (index < cut[k]))
            tau = torch.where(keep, tau, torch.zeros_like(tau))
        if dare:
            keep = draws[k].to(dt) < params[k_count + k]
            tau = torch.where(keep, tau / params[2 * k_count + k], torch.zeros_like(tau))
        weighted.append(tau * params[k])
    total = weighted[0]
    for k in range(1, k_count):
        total = total + weighted[k]
    if consensus:
        elected = torch.where(total >= 0, torch.ones_like(total), -torch.ones_like(total))
        mixed = torch.zeros_like(total)
        divisor = torch.zeros_like(total)
        for k in range(k_count):
            agree = torch.sign(weighted[k]) == elected
            mixed = mixed + torch.where(agree, weighted[k], torch.zeros_like(total))
            divisor = divisor + torch.where(agree, params[k], torch.zeros_like(total))
        divisor = torch.where(divisor == 0, torch.ones_like(divisor), divisor)
        mixed = torch.where(params[3 * k_count + 2] > 0, mixed / divisor, mixed)
    else:
        mixed = total / params[3 * k_count + 1]
    merged = (b + params[3 * k_count] * mixed).to(plan_dtype)
    out.copy_(merged)
    return torch.isfinite(merged).all()


def fused(method: MergeMethod) -> bool:
    """Whether this module has a fused kernel for ``method`` (else the eager operator runs)."""
    if method.family is not None:
        return method.family.sparsify in FUSED_SPARSIFY
    return method.name in FUSED_OTHERS


_COMPILED: dict[str, Callable[..., Tensor]] = {}


def chunk_kernel(name: str, compile: bool = True) -> Callable[..., Tensor]:
    """The chunk function ``name`` ("linear" or "gta"), compiled once per process unless ``compile`` is off."""
    fn = {"linear": _linear_chunk, "gta": _gta_chunk}[name]
    if not compile:
        return fn
    if name not in _COMPILED:
        # One compiled function serves (K, dtypes, flags) variants; allow more than dynamo's default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _COMPILED[name] = torch.compile(fn, dynamic=True, backend="inductor")
    return _COMPILED[name]


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Trim:
    """One source's trimming cut for one tensor and candidate: keep |τ| > low, and |τ| == low before p."""

    low: float
    p: int


class FastMerger:
    """Per-worker cache of source-only work and the fused per-candidate pass (see the module docstring).

    ``cache``: keep sorted magnitudes (values + indices) and DARE draws between candidates (on top of
    the pool's K+1 models: 2K model-sizes for TIES, K for DARE); False recomputes them per candidate. ``compile``: run the chunk functions through torch.compile
    (None: for tensors of at least ``COMPILE_MIN`` elements only).
    """

    def __init__(self, pool: SourcePool, *, cache: bool = True, compile: bool | None = None, chunk: int | None = None):
        """``chunk``: elements per kernel call; None = whole tensors for compiled kernels, CHUNK for eager ones."""
        if chunk is not None and (chunk <= 0 or chunk & (chunk - 1)):
            raise ValueError("chunk must be a power of two (keeps every chunk's start aligned)")
        self.pool, self.cache, self.compile, self.chunk = pool, cache, compile, chunk
        self._sorted: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self._draws: dict[tuple[int, str, int], Tensor] = {}
        self._cos: dict[str, Tensor] = {}
        self._aligned: set[str] = set()

    # -- source-only work, computed once ------------------------------------------------------------

    def sorted_magnitudes(self, name: str, k: int) -> tuple[Tensor, Tensor]:
        """|θ_k − θ0| of tensor ``name`` flattened, stably sorted ascending: (values, flat indices)."""
        key = (name, k)
        if key in self._sorted:
            return self._sorted[key]
        base = self.pool.base.tensors[name]
        dt = compute_dtype(base)
        tau = self.pool.sources[k].tensors[name].to(dt) - base.to(dt)
        values, order = tau.abs_().flatten().sort(stable=True)
        del tau
        if order.numel() < 2**31:
            order = order.to(torch.int32)
        if self.cache:
            self._sorted[key] = (values, order)
        return values, order

    def draws(self, seed: int, name: str, k: int) -> Tensor:
        """The DARE/DELLA uniform draws of (seed, tensor, source), flattened (float32)."""
        key = (seed, name, k)
        if key in self._draws:
            return self._draws[key]
        u = uniform_draws(seed, name, k, self.pool.base.tensors[name].shape).flatten()
        if self.cache:
            if any(s != seed for s, _, _ in self._draws):  # a new run seed: the old draws are dead
                self._draws = {key_: v for key_, v in self._draws.items() if key_[0] == seed}
            self._draws[key] = u
        return u

    def align(self, name: str) -> None:
        """Move the pool's copies of tensor ``name`` into fresh aligned anonymous memory (once; see the module docstring)."""
        if name in self._aligned:
            return
        for model in (self.pool.base, *self.pool.sources):
            model.tensors[name] = model.tensors[name].contiguous().clone()  # a fresh allocation: aligned, not file-backed
        self._aligned.add(name)

    def slerp_cos(self, name: str) -> Tensor:
        """cos Ω of base and source 0 over the flattened tensor, [1, 1], exactly as ``methods/slerp.py``."""
        if name in self._cos:
            return self._cos[name]
        base = self.pool.base.tensors[name]
        dt = compute_dtype(base)
        a = base.to(dt).reshape(1, -1)
        b = self.pool.sources[0].tensors[name].to(dt).reshape(1, -1)
        dot = slerp_method.cos_angle(a, b)
        self._cos[name] = dot  # a scalar per tensor: kept even with cache=False
        return dot

    def prepare(self, methods: Sequence[str], seed: int = 0) -> None:
        """Fill the cache now for these methods (else the first candidate that needs an entry pays it)."""
        families = {get_method(m).family.sparsify for m in methods if get_method(m).family is not None}
        names = [n for n in self.pool.tensor_names if self.pool.is_mergeable(n)]
        for name in names:
            for k in range(len(self.pool.sources)):
                if "magnitude" in families:
                    self.sorted_magnitudes(name, k)
                if "random" in families:
                    self.draws(seed, name, k)

    def cache_bytes(self) -> int:
        arrays = [t for pair in self._sorted.values() for t in pair] + list(self._draws.values())
        return sum(t.numel() * t.element_size() for t in arrays)

    # -- per candidate ---------------------------------------------------------------------------------

    def supports(self, step: TensorStep) -> bool:
        return step.method is not None and fused(step.method)

    def materialize(self, plan: MergePlan, params: Mapping[str, Tensor] | MutableMapping[str, Tensor]) -> list[str]:
        """Write every tensor of ``plan`` into ``params[name]`` in place; return the non-finite tensors' names.

        Steps whose method the fused path does not cover run the eager operator.
        """
        bad: list[str] = []
        with torch.no_grad():
            for step in plan.steps:
                dst = params[step.name]
                if self.supports(step):
                    finite = self.merge_into(step, plan, dst)
                else:
                    tensor = plan.merge_tensor(step, self.pool)
                    finite = not tensor.is_floating_point() or bool(torch.isfinite(tensor).all())
                    dst.copy_(tensor)
                if not finite:
                    bad.append(step.name)
        return bad

    def merge_into(self, step: TensorStep, plan: MergePlan, dst: Tensor) -> bool:
        """Fused merge of one tensor into ``dst``; True when every merged value is finite."""
        assert step.method is not None
        method = step.method.name
        self.align(step.name)
        base = self.pool.base.tensors[step.name]
        sources = [s.tensors[step.name] for s in self.pool.sources]
        k_count = len(sources)
        plan_dtype = plan.dtype or base.dtype
        per = {k: [float(v)] * k_count for k, v in step.method.per_source.items()}
        per.update({k: [float(x) for x in v] for k, v in step.source_params.items()})
        glob = {**step.method.globals, **step.params}
        weight = per.get("weight", [1.0] * k_count)
        dt = compute_dtype(sources[0] if method == "linear" else base)

        n = base.numel()
        direct = dst.is_contiguous() and dst.device == base.device  # else: merge on the pool's device, then copy
        target = dst if direct else torch.empty(dst.shape, dtype=dst.dtype, device=base.device)
        out = target.view(-1)
        srcs = [s.reshape(-1) for s in sources]
        if method == "slerp":
            coef_a, coef_b = slerp_method.coefficients(self.slerp_cos(step.name), float(glob.get("t", 0.5)))
            params = torch.cat([coef_a.flatten(), coef_b.flatten(), torch.ones(1, dtype=dt)])
            pair = [base.reshape(-1), srcs[0]]
            compiled = self._compiles(n)
            kernel = chunk_kernel("linear", compiled)
            flags = [kernel(out[a:b], [s[a:b] for s in pair], params, plan_dtype) for a, b in self._chunks(n, compiled)]
        elif method == "linear":
            total = float(sum(weight))
            divisor = total if glob.get("normalize", True) and abs(total) >= 1e-8 else 1.0
            params = torch.tensor([*weight, divisor], dtype=dt)
            compiled = self._compiles(n)
            kernel = chunk_kernel("linear", compiled)
            flags = [kernel(out[a:b], [s[a:b] for s in srcs], params, plan_dtype) for a, b in self._chunks(n, compiled)]
        else:
            family = step.method.family
            assert family is not None
            trim, dare, consensus = family.sparsify == "magnitude", family.sparsify == "random", family.consensus
            normalize = bool(glob.get("normalize"))
            w = torch.tensor(weight, dtype=dt)
            divisor = float(w.sum()) if normalize else 1.0  # as ``combine``: |Σw| < 1e-8 → 1
            if normalize and abs(divisor) < 1e-8:
                divisor = 1.0
            density = per.get("density", [1.0] * k_count)
            second, third = [0.0] * k_count, [1.0] * k_count
            cuts = [n] * k_count
            if trim:
                for k, d in enumerate(density):
                    cut = self._trim(step.name, k, d, base)
                    second[k], cuts[k] = cut.low, cut.p
            if dare:
                for k, d in enumerate(density):
                    second[k] = 2.0 if d >= 1 else d  # u < 2 always: d ≥ 1 keeps τ_k whole
                    third[k] = 1.0 if d >= 1 or d <= 0 else d
            params = torch.tensor([*weight, *second, *third, float(glob.get("lam", 1.0)), divisor, float(normalize)], dtype=dt)
            b = base.reshape(-1)
            u = [self.draws(plan.seed, step.name, k) for k in range(k_count)] if dare else []
            compiled = self._compiles(n)
            kernel = chunk_kernel("gta", compiled)
            flags = []
            for a, e in self._chunks(n, compiled):
                cut = torch.tensor([min(max(p - a, 0), e - a) for p in cuts], dtype=torch.int64)
                flags.append(kernel(out[a:e], b[a:e], [s[a:e] for s in srcs], [x[a:e] for x in u], params, cut,
                                    plan_dtype, trim, dare, consensus))
        if target is not dst:
            dst.copy_(target)
        return bool(torch.stack(flags).all()) if flags else True

    def _compiles(self, n: int) -> bool:
        """Compiled kernel for a tensor of n elements? (n = 1 would only add a size-1 specialization.)"""
        return n > 1 and (n >= COMPILE_MIN if self.compile is None else self.compile)

    def _chunks(self, n: int, compiled: bool) -> list[tuple[int, int]]:
        chunk = self.chunk or (n if compiled else CHUNK)
        return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]

    def _trim(self, name: str, k: int, density: float, base: Tensor) -> _Trim:
        """The cut of top-d trimming for source k, read from the whole tensor's sorted magnitudes."""
        n = base.numel()
        keep = keep_count(density, n)
        if keep >= n:
            return _Trim(-math.inf, n)
        if keep <= 0:
            return _Trim(math.inf, 0)
        asc, order = self.sorted_magnitudes(name, k)
        low = asc[n - keep : n - keep + 1]
        first = int(torch.searchsorted(asc, low, right=False))  # the group of |τ| == low is asc[first:stop]
        stop = int(torch.searchsorted(asc, low, right=True))
        need = keep - (n - stop)  # tied entries to keep, lowest flat index first
        if need == stop - first:
            return _Trim(float(low), n)
        return _Trim(float(low), int(order[first + need - 1]) + 1)


def merge_tensors(plan: MergePlan, pool: SourcePool, **options: Any) -> dict[str, Tensor]:
    """The whole merged model as new tensors (for tests and export; a worker writes in place instead)."""
    merger = FastMerger(pool, **options)
    out = {}
    for step in plan.steps:
        base = pool.base.tensors[step.name]
        out[step.name] = torch.empty(base.shape, dtype=(plan.dtype if step.method is not None else None) or base.dtype)
    merger.materialize(plan, out)
    return out
