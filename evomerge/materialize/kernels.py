"""The fused chunk kernels: plain torch on 1-D slices, compiled once per process (eager if that fails).

Each kernel reads its inputs once and, compiled, is one loop with no intermediate buffer (inductor
fuses every elementwise step and stores the result straight into ``out``), on the CPU or a GPU.
``params`` holds a candidate's numbers as a tensor in the compute dtype, so new values never
trigger a recompile; one compile (``dynamic=True``) serves every tensor shape.

``torch.compile`` needs a working compiler (a C++ toolchain on CPU, triton on CUDA). When the first
compiled call fails and the very same function run eagerly succeeds, the process switches every
kernel to eager mode with one warning: slower, same results (the eager run *is* the reference the
compiled code is tested against).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from evomerge.merge.draws import draw_bits, pair_hash
from evomerge.merge.methods.nearswap import blend
from evomerge.merge.methods.pcb import kept_mean
from evomerge.merge.sparsify import task_vector

TIE_BLOCK = 1 << 12  # entries per tie count (``_tie_counts``)


@dataclass(frozen=True)
class ParamLayout:
    """Where a kernel finds each of a candidate's numbers in its ``params`` tensor, by name: K values per per-source
    field (in this order), then one per scalar. ``fused.py`` packs with it and the kernel unpacks with it, so no
    position is counted in two places."""

    per_source: tuple[str, ...]
    scalars: tuple[str, ...]

    def pack(self, dtype: torch.dtype, device: torch.device, **fields: Any) -> Tensor:
        """``params`` from every field: K numbers (or a tensor of K) per per-source field, a number per scalar.
        Plain numbers make one tensor in one step (one copy to the device); a tensor field is concatenated on its
        device, with no copy to the host."""
        names = (*self.per_source, *self.scalars)
        assert set(fields) == set(names), f"params are {names}, got {tuple(fields)}"
        values = [fields[name] for name in names]
        if any(isinstance(v, Tensor) for v in values):
            return torch.cat([torch.as_tensor(v, dtype=dtype, device=device).reshape(-1) for v in values])
        flat = [x for name in self.per_source for x in fields[name]]
        return torch.tensor([*flat, *(fields[name] for name in self.scalars)], dtype=dtype, device=device)

    def unpack(self, params: Tensor, k_count: int) -> dict[str, Tensor]:
        """Each field's view of ``params``: [K] for a per-source field, a 0-d tensor for a scalar."""
        out = {name: params[i * k_count : (i + 1) * k_count] for i, name in enumerate(self.per_source)}
        first = len(self.per_source) * k_count
        out.update({name: params[first + j] for j, name in enumerate(self.scalars)})
        return out


# ``divisor``: Σ w_k guarded, or 1 when not normalizing; SLERP packs its two coefficients as the weights, divisor 1
LINEAR_PARAMS = ParamLayout(per_source=("weight",), scalars=("divisor",))
# ``low``: |τ| above it survives trimming; ``dare_divisor``: the DARE rescale d (1 without DARE); λ; the divisor
# without consensus; ``normalize`` (1.0 or 0.0) tells the consensus branch whether to divide
GTA_PARAMS = ParamLayout(per_source=("weight", "low", "dare_divisor"), scalars=("lam", "divisor", "normalize"))
# NearSwap's distance t
NEARSWAP_PARAMS = ParamLayout(per_source=(), scalars=("t",))
# PCB's step 4 cut t_k and largest balance per source (``methods/pcb.Balances``), w_k, and λ
PCB_PARAMS = ParamLayout(per_source=("weight", "cut", "high"), scalars=("lam",))


def _linear_chunk(out: Tensor, sources: list[Tensor], params: Tensor, plan_dtype: torch.dtype) -> Tensor:
    """Σ w_k θ_k / divisor (``LINEAR_PARAMS``)."""
    k_count = len(sources)
    dt = params.dtype
    p = LINEAR_PARAMS.unpack(params, k_count)
    acc = sources[0].to(dt) * p["weight"][0]
    for k in range(1, k_count):
        acc = acc + sources[k].to(dt) * p["weight"][k]
    merged = (acc / p["divisor"]).to(plan_dtype)
    out.copy_(merged)
    return _all_finite(merged)


def _nearswap_chunk(out: Tensor, base: Tensor, source: Tensor, params: Tensor, plan_dtype: torch.dtype) -> Tensor:
    """NearSwap over a chunk (``NEARSWAP_PARAMS``): ``methods/nearswap.blend`` itself, one pass over θ0 and θ_1."""
    dt = params.dtype
    merged = blend(base.to(dt), source.to(dt), NEARSWAP_PARAMS.unpack(params, 1)["t"]).to(plan_dtype)
    out.copy_(merged)
    return _all_finite(merged)


def _pcb_chunk(out: Tensor, base: Tensor, clipped: list[Tensor], balance: list[Tensor], params: Tensor,
               plan_dtype: torch.dtype) -> Tensor:
    """θ0 + λ · PCB's steps 4–5 over a chunk of a tensor's kept rows (``PCB_PARAMS``): ``kept_mean`` itself, so the
    eager kernel is the reference's arithmetic entry for entry."""
    p = PCB_PARAMS.unpack(params, len(clipped))
    mean = kept_mean(clipped, balance, p["cut"], p["high"], p["weight"])
    merged = (base.to(params.dtype) + p["lam"] * mean).to(plan_dtype)
    out.copy_(merged)
    return _all_finite(merged)


def _all_finite(merged: Tensor) -> Tensor:
    """Whether every entry is finite: x − x is 0 for a finite x and NaN otherwise, so their sum is 0 exactly when all
    are finite (two operations per entry where ``isfinite().all()`` compiles to six)."""
    return (merged - merged).sum() == 0


def _draw_bits(k: int, draws: list[Tensor], index: Tensor, keys: Tensor, hashed: Tensor | None,
               dt: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """Source k's 16 draw bits for this chunk: from the cache (a high and a low byte, as exact floats: byte loads
    and byte-to-float conversions vectorize where 16-bit ones do not), or regenerated from the flat index."""
    if draws:
        return draws[2 * k].to(dt) * 256 + draws[2 * k + 1].to(dt), hashed
    if k % 2 == 0:
        hashed = pair_hash(index, keys[k // 2])
    assert hashed is not None
    return draw_bits(hashed, k), hashed


def _gta_chunk(
    out: Tensor, base: Tensor, sources: list[Tensor], draws: list[Tensor], params: Tensor, cut: Tensor,
    start: Tensor, keys: Tensor, plan_dtype: torch.dtype, trim: bool, dare: bool, consensus: bool,
) -> Tensor:
    """Generalized task arithmetic over one chunk, as ``sparsify.combine`` after the masks.

    ``params``: ``GTA_PARAMS``; ``start``: the chunk's first flat index. Trimming keeps |τ| > low:
    ``FastMerger`` splits a tensor at each source's cut p and lowers ``low`` to the next value below it
    where the ties at ``low`` are kept (flat index < p), so no index is compared. DARE keeps entries
    whose draw bits < cut[k] (u < d exactly: ``FastMerger`` turns d into that integer, which spares
    converting the bits to floats); the bits come from ``draws`` (cached: each source's high and low
    bytes) or, when it is empty, are regenerated from the flat index and ``keys``.
    """
    k_count = len(sources)
    dt = params.dtype
    p = GTA_PARAMS.unpack(params, k_count)
    b = base.to(dt)
    index = torch.arange(base.shape[0], device=base.device) + start if dare and not draws else start
    weighted = []
    hashed = None
    for k in range(k_count):
        tau = task_vector(b, sources[k], dt)
        if trim:  # masked by a product, as the reference's ``tau * mask``
            tau = tau * (tau.abs() > p["low"][k]).to(dt)
        if dare:
            bits, hashed = _draw_bits(k, draws, index, keys, hashed, dt)
            tau = torch.where(bits < cut[k], tau / p["dare_divisor"][k], torch.zeros_like(tau))
        weighted.append(tau * p["weight"][k])
    total = weighted[0]
    for k in range(1, k_count):
        total = total + weighted[k]
    # w agrees with the elected sign (Σ w >= 0: +) when w · sign > 0; masks as products, as the reference's
    if consensus:
        sign = torch.where(total >= 0, 1.0, -1.0)
        mixed, divisor = torch.zeros_like(total), torch.zeros_like(total)
        for k in range(k_count):
            agree = (weighted[k] * sign > 0).to(dt)
            mixed = mixed + weighted[k] * agree
            divisor = divisor + p["weight"][k] * agree
        divisor = torch.where(divisor == 0, 1.0, divisor)
        mixed = torch.where(p["normalize"] > 0, mixed / divisor, mixed)
    else:
        mixed = total / p["divisor"]
    merged = (b + p["lam"] * mixed).to(plan_dtype)
    out.copy_(merged)
    return _all_finite(merged)


def magnitude_key(mag: Tensor) -> Tensor:
    """A histogram key of non-negative floats, monotone in the value: the top 16 bits of the bit pattern (sign,
    exponent, 7 mantissa bits), times 2, plus 1 when any lower bit is set. The even key of a bin is its one
    value with clear low bits (bfloat16 deltas: almost all entries); the odd key, the rest of the bin."""
    if mag.dtype == torch.float64:
        bits = mag.view(torch.int64)
        return (bits >> 48) * 2 + ((bits & 0xFFFFFFFFFFFF) != 0).to(torch.int64)
    bits = mag.view(torch.int32)
    return (bits >> 16).to(torch.int64) * 2 + ((bits & 0xFFFF) != 0).to(torch.int64)


def _magnitude_keys(keys: Tensor, base: Tensor, source: Tensor, dt: torch.dtype) -> None:
    """keys (int64) gets the histogram key of |θ_k − θ0| (``thresholds``' counting pass)."""
    keys.copy_(magnitude_key(task_vector(base, source, dt).abs()))


def _value_rows(out: Tensor, base: Tensor, source: Tensor, rows: Tensor, dt: torch.dtype) -> None:
    """out (int64) gets ``rows`` at the histogram key of |θ_k − θ0|: each entry's row in a tie index (its counting
    pass; the same lookup eagerly takes five times as long as the whole compiled pass)."""
    out.copy_(rows[magnitude_key(task_vector(base, source, dt).abs())])


def _bin_flags(out: Tensor, base: Tensor, sources: list[Tensor], bounds: Tensor, dt: torch.dtype) -> None:
    """out (uint8) gets bit k set where |θ_k − θ0| has a bit pattern in [bounds[0, k], bounds[1, k]] (the patterns of
    one histogram key: ``key_patterns``), for up to 8 sources; compared as integers of the float's width."""
    b = base.to(dt)
    flags = torch.zeros(base.shape, dtype=torch.int32, device=base.device)
    for k in range(len(sources)):
        bits = task_vector(b, sources[k], dt).abs().view(bounds.dtype)
        flags = flags | (((bits >= bounds[0, k]) & (bits <= bounds[1, k])).to(torch.int32) << k)
    out.copy_(flags.to(out.dtype))


def key_patterns(key: int, dt: torch.dtype) -> tuple[int, int]:
    """The least and greatest bit pattern of a ``magnitude_key``: its even key is one pattern (clear low bits), its
    odd key every pattern above that one up to the next even key's."""
    shift = 48 if dt == torch.float64 else 16
    first = (key >> 1) << shift
    return (first + 1, first + (1 << shift) - 1) if key & 1 else (first, first)


def _draw_bytes(rows: list[Tensor], start: Tensor, key: Tensor) -> None:
    """The draw cache's bytes for one source pair over flat indices ``start`` … ``start + len(rows[0])``: ``rows``
    (uint8; 2 for the pair's first source alone, 4 for both) are the high and the low byte of each source's draw
    bits in turn. One hash serves the pair, and one loop fills every row (compiled: in registers)."""
    hashed = pair_hash(torch.arange(rows[0].shape[0], device=rows[0].device) + start, key)
    for s in range(len(rows) // 2):
        bits = draw_bits(hashed, s)
        rows[2 * s].copy_(bits >> 8)
        rows[2 * s + 1].copy_(bits & 0xFF)


def _tie_counts(out: Tensor, base: Tensor, source: Tensor, low: Tensor, dt: torch.dtype) -> None:
    """out[b] = how many entries of block b (``TIE_BLOCK`` entries) have |θ_k − θ0| == low (a one-element tensor)."""
    equal = (task_vector(base, source, dt).abs() == low).to(torch.int64)
    out.copy_(equal.view(-1, TIE_BLOCK).sum(1))


_FUNCTIONS: dict[str, Callable[..., object]] = {"linear": _linear_chunk, "gta": _gta_chunk, "pcb": _pcb_chunk,
                                                "nearswap": _nearswap_chunk,
                                                "bin_flags": _bin_flags, "draw_bytes": _draw_bytes,
                                                "tie_counts": _tie_counts, "magnitude_keys": _magnitude_keys,
                                                "value_rows": _value_rows}
_COMPILED: dict[str, Callable[..., object]] = {}
_compile_broken = False  # set by the first failed compile: every kernel runs eagerly from then on
_PROBED: dict[str, bool] = {}
compiled_calls: Counter[str] = Counter()  # per kernel name, calls that ran compiled: tests check the fallback did not


def compile_works(device: torch.device) -> bool:
    """Whether torch.compile works on this device type (a tiny function compiled once per process), so a merger
    picks the eager kernels' chunking before it ever calls a kernel that would fall back on a whole tensor."""
    global _compile_broken
    if _compile_broken:
        return False
    if device.type not in _PROBED:
        try:
            probe = torch.compile(lambda x: x * 2 + 1, dynamic=True, backend="inductor")
            ok = bool(torch.equal(probe(torch.ones(8, device=device)), torch.full((8,), 3.0, device=device)))
        except Exception as error:
            ok = False
            warnings.warn(f"torch.compile does not work here ({type(error).__name__}: {_first_line(error)}); merging "
                          "with the eager kernels (slower, same results)", RuntimeWarning, stacklevel=2)
        _PROBED[device.type] = ok
        _compile_broken = not ok
    return _PROBED[device.type]


def chunk_kernel(name: str, compile: bool = True) -> Callable[..., object]:
    """The chunk function ``name`` (a key of ``_FUNCTIONS``), compiled once per process unless off."""
    fn = _FUNCTIONS[name]
    if not compile or _compile_broken:
        return fn
    if name not in _COMPILED:
        # One compiled function serves (K, dtypes, flags) variants; allow more than dynamo's default 8.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _COMPILED[name] = _with_fallback(name, fn, torch.compile(fn, dynamic=True, backend="inductor"))
    return _COMPILED[name]


def _with_fallback(name: str, fn: Callable[..., object], compiled: Callable[..., object]) -> Callable[..., object]:
    """``compiled``, or ``fn`` for good once a compiled call fails where the eager call does not (kernel ``name``)."""

    def call(*args: object) -> object:
        global _compile_broken
        if _compile_broken:
            return fn(*args)
        try:
            result = compiled(*args)
        except Exception as error:
            result = fn(*args)  # raises again if the inputs, not the compiler, are the problem
            _compile_broken = True
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {_first_line(error)}); merging with the "
                          "eager kernels from now on (slower, same results)", RuntimeWarning, stacklevel=2)
            return result
        compiled_calls[name] += 1
        return result

    return call


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""
