"""TIES trimming cuts: for a tensor, a source and a density, which |τ| entries survive — exactly as the reference.

Top-d trimming keeps the ``keep_count(d, n)`` largest |τ_k| of a tensor, ties ranked by flat index
(lower first). A cut is two numbers, ``Trim(low, p)``: keep |τ| > low, and |τ| == low at flat index
< p. The fused kernel applies it in its one pass; this module finds it, two ways that give the
same cut (the memory plan picks one; ``tests/materialize`` checks they agree):

- **sorted**: |τ_k| sorted once per worker (values + flat indices: 8 bytes per entry and source) —
  the cut is a lookup, ``asc[n − keep]``, plus two binary searches. Fastest; the most memory.
- **histogram**: per (tensor, source) a count of |τ_k| per bin of the top 16 bits of its float bit
  pattern (2**15 log-spaced bins, monotone in the value; kilobytes), kept once per worker. A cut
  first reads the bin that holds rank ``keep`` from the counts, then one pass over the tensor (a
  compiled kernel, all sources at once) flags the entries of each source's cut bin; only those are
  gathered and counted by their low 16 bits (they share the top 16), which fixes ``low`` and the
  flat index of the last kept tie exactly.

Tensors smaller than ``HISTOGRAM_MIN`` entries always use sorted copies: they cost less than a histogram.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from evomerge.materialize.kernels import chunk_kernel, magnitude_code
from evomerge.merge.sparsify import compute_dtype, keep_count

Thresholds = Literal["sorted", "histogram"]
HISTOGRAM_MIN = 1 << 16  # entries: below this a sorted copy (8 bytes/entry) is smaller than the counts
BINS = 1 << 16  # codes of the top 16 bits (the sign bit of |τ| is 0: 2**15 are used)
SCAN = 1 << 22  # entries per eager pass when counting (bounds the temporaries)
FLAG_SOURCES = 8  # sources per flag pass (bits of a uint8)
SPARSE = 64  # flagged entries under 1/64 of a tensor: scan the flags a word at a time


@dataclass(frozen=True)
class Trim:
    """One source's cut for one tensor and candidate: keep |τ| > low, and |τ| == low at flat index < p."""

    low: float
    p: int


@dataclass(frozen=True)
class _Counts:
    """|τ| counts per bin over the used range of bins: ``ge[j]`` entries have a code >= first + j."""

    first: int
    ge: Tensor

    def above(self, j: int) -> int:
        """Entries in bins above first + j."""
        return int(self.ge[j + 1]) if j + 1 < self.ge.numel() else 0


class TrimCuts:
    """The cuts of one worker, with its cache of sorted copies or histograms (``mode``)."""

    def __init__(self, mode: Thresholds, *, compiles: Callable[[int], bool], chunk: Callable[[int, bool], int]):
        """``compiles(n)``: whether a tensor of n entries uses compiled kernels; ``chunk(n, compiled)``: entries per call."""
        self.mode, self.compiles, self.chunk = mode, compiles, chunk
        self._sorted: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}
        self._counts: dict[tuple[str, int], _Counts] = {}
        self._flags: Tensor | None = None  # scratch of the flag pass, reused across tensors

    def cuts(self, name: str, densities: Sequence[float], base: Tensor, sources: Sequence[Tensor]) -> list[Trim]:
        """The cut of every source (flattened inputs, on the merging device)."""
        n = base.numel()
        keeps = [keep_count(d, n) for d in densities]
        trims: list[Trim | None] = [_trivial(keep, n) for keep in keeps]
        todo = [k for k, t in enumerate(trims) if t is None]
        if todo and (self.mode == "sorted" or n < HISTOGRAM_MIN):
            for k in todo:
                trims[k] = self._from_sorted(name, k, keeps[k], base, sources[k])
        elif todo:
            for k, trim in self._from_counts(name, todo, keeps, base, sources).items():
                trims[k] = trim
        return [t for t in trims if t is not None]

    def cache_bytes(self) -> int:
        arrays = [t for pair in self._sorted.values() for t in pair] + [c.ge for c in self._counts.values()]
        return sum(t.numel() * t.element_size() for t in arrays)

    # -- sorted copies --------------------------------------------------------------------------------

    def sorted_magnitudes(self, name: str, k: int, base: Tensor, source: Tensor) -> tuple[Tensor, Tensor]:
        """|θ_k − θ0| flattened, stably sorted ascending: (values, flat indices), cached."""
        key = (name, k)
        if key not in self._sorted:
            dt = compute_dtype(base)
            values, order = (source.to(dt) - base.to(dt)).abs_().flatten().sort(stable=True)
            self._sorted[key] = (values, order.to(torch.int32) if order.numel() < 2**31 else order)
        return self._sorted[key]

    def _from_sorted(self, name: str, k: int, keep: int, base: Tensor, source: Tensor) -> Trim:
        asc, order = self.sorted_magnitudes(name, k, base, source)
        n = asc.numel()
        low = asc[n - keep : n - keep + 1]
        first = int(torch.searchsorted(asc, low, right=False))  # the group of |τ| == low is asc[first:stop]
        stop = int(torch.searchsorted(asc, low, right=True))
        need = keep - (n - stop)  # tied entries to keep, lowest flat index first
        if need == stop - first:
            return Trim(float(low), n)
        return Trim(float(low), int(order[first + need - 1]) + 1)

    # -- histograms -----------------------------------------------------------------------------------

    def counts(self, name: str, k: int, base: Tensor, source: Tensor) -> _Counts:
        """|θ_k − θ0| counted per bin (once per worker): a few kilobytes per tensor and source."""
        key = (name, k)
        if key not in self._counts:
            dt = compute_dtype(base)
            total = torch.zeros(BINS, dtype=torch.int64, device=base.device)
            for a in range(0, base.numel(), SCAN):
                codes = magnitude_code((source[a : a + SCAN].to(dt) - base[a : a + SCAN].to(dt)).abs())
                total += torch.bincount(codes, minlength=BINS)
            used = torch.nonzero(total).flatten()
            first, last = int(used[0]), int(used[-1])
            self._counts[key] = _Counts(first, total[first : last + 1].flip(0).cumsum(0).flip(0))
        return self._counts[key]

    def _from_counts(self, name: str, todo: list[int], keeps: list[int], base: Tensor, sources: Sequence[Tensor]) -> dict[int, Trim]:
        """The cut bin of each source from its counts, then one flag pass and a sort of the cut bins' entries."""
        bins, above, flagged = {}, {}, 0
        for k in todo:
            c = self.counts(name, k, base, sources[k])
            j = int(torch.searchsorted(-c.ge, torch.tensor(-keeps[k], device=c.ge.device), right=True)) - 1
            bins[k] = c.first + j  # the highest bin whose entries and those above it number >= keep
            above[k] = c.above(j)  # entries in higher bins: all kept
            flagged += int(c.ge[j]) - above[k]
        positions = self._flag(base, sources, bins, sparse=flagged * SPARSE < base.numel())
        return {k: self._refine(keeps[k] - above[k], base, sources[k], positions[k]) for k in todo}

    def _flag(self, base: Tensor, sources: Sequence[Tensor], bins: dict[int, int], sparse: bool) -> dict[int, Tensor]:
        """Flat indices (ascending) of the entries of each source's cut bin: one pass per 8 sources. ``sparse``:
        few entries are flagged, so scanning 8 flags at a time (as int64 words) finds them faster."""
        n = base.numel()
        dt = compute_dtype(base)
        out: dict[int, Tensor] = {}
        group = sorted(bins)
        for g in range(0, len(group), FLAG_SOURCES):
            ks = group[g : g + FLAG_SOURCES]
            flags = self._scratch(n, base.device)
            codes = torch.tensor([bins[k] for k in ks], dtype=torch.int64, device=base.device)
            compiled = self.compiles(n)
            kernel, step = chunk_kernel("bin_flags", compiled), self.chunk(n, compiled)
            for a in range(0, n, step):
                e = min(a + step, n)
                kernel(flags[a:e], base[a:e], [sources[k][a:e] for k in ks], codes, dt)
            if sparse:
                words = torch.nonzero(flags.view(torch.int64)).flatten()
                near = (words[:, None] * 8 + torch.arange(8, device=base.device)).flatten()
            else:
                near = torch.nonzero(flags).flatten()
            hit = flags[near]
            for bit, k in enumerate(ks):
                out[k] = near[((hit >> bit) & 1).bool()]
        return out

    def _scratch(self, n: int, device: torch.device) -> Tensor:
        """A zeroed uint8 buffer of at least n bytes rounded up to whole 8-byte words."""
        size = -(-n // 8) * 8
        if self._flags is None or self._flags.numel() < size or self._flags.device != device:
            self._flags = torch.empty(size, dtype=torch.uint8, device=device)
        flags = self._flags[:size]
        flags[n:].zero_()
        return flags

    @staticmethod
    def _refine(need: int, base: Tensor, source: Tensor, positions: Tensor) -> Trim:
        """The cut from the cut bin's entries: the need-th largest |τ| (ties by flat index) is the last kept.

        In float32 the entries of one bin differ only in their low 16 bits, so a count per low-bits value
        (no sort) finds the cut value; float64 (tests) sorts them."""
        dt = compute_dtype(base)
        values = (source[positions].to(dt) - base[positions].to(dt)).abs()
        if dt == torch.float32:
            bits = values.view(torch.int32) & 0xFFFF
            ge = torch.bincount(bits, minlength=1 << 16).flip(0).cumsum(0).flip(0)  # entries with low bits >= j
            j = int(torch.searchsorted(-ge, torch.tensor(-need, device=ge.device), right=True)) - 1
            at = bits == j
            above = int(ge[j + 1]) if j + 1 < ge.numel() else 0
        else:
            ranked = values.sort(descending=True, stable=True).values
            at = values == ranked[need - 1]
            above = int((values > ranked[need - 1]).sum())
        tied = positions[at]  # ascending flat index
        low = float(values[at][0])
        if need - above == tied.numel():
            return Trim(low, base.numel())
        return Trim(low, int(tied[need - above - 1]) + 1)


def _trivial(keep: int, n: int) -> Trim | None:
    """The cut when every entry or none is kept; None when a real cut is needed."""
    if keep >= n:
        return Trim(-math.inf, n)
    if keep <= 0:
        return Trim(math.inf, 0)
    return None
