"""TIES trimming cuts: for a tensor, a source and a density, which |τ| entries survive — exactly as the reference.

Top-d trimming keeps the ``keep_count(d, n)`` largest |τ_k| of a tensor, ties ranked by flat index
(lower first). A cut is two numbers, ``Trim(low, p)``: keep |τ| > low, and |τ| == low at flat index
< p. The fused kernel applies it in its one pass; this module finds it, two ways that give the
same cut (the memory plan picks one; ``tests/materialize`` checks they agree):

- **sorted** (``SortedCuts``): |τ_k| sorted once per worker (values + flat indices: 8 bytes per entry and source;
  none where θ_k = θ0) — the cut is a lookup, ``asc[n − keep]``, plus two binary searches. Fastest; the most memory.
- **histogram** (``HistogramCuts``): per (tensor, source), kept once per worker (kilobytes), the count of |τ_k| per
  key of its float bit pattern — the top 16 bits (2**15 log-spaced bins, monotone in the value),
  split into the bin's one value with clear low bits (an even key) and the rest (an odd key;
  ``kernels.magnitude_key``). The counts give the key that holds rank ``keep``. When it is even
  (bfloat16 deltas: almost always), its one value is ``low``, and only if the cut falls inside its
  group of ties is the last kept tie's flat index needed. For the ``TIE_KEYS`` most frequent values
  of a (tensor, source) the fill also counts their entries per block of the tensor (at most
  ``TIE_BLOCKS`` blocks; kilobytes), so that tie is found by looking into one block; for a rarer
  value a compiled kernel counts its ties per block of entries, from the nearer end of the tensor
  and only as far as the last kept one. When the key is odd, one pass flags its entries (few: such
  values spread over many bins), which are gathered and counted by their low 16 bits — the same
  ``low`` and tie index.

Tensors smaller than ``HISTOGRAM_MIN`` entries always use sorted copies: they cost less than a histogram.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import Tensor

from evomerge.materialize.kernels import TIE_BLOCK, chunk_kernel, key_patterns
from evomerge.merge.sparsify import compute_dtype, keep_count, sort_magnitudes, task_vector

Thresholds = Literal["sorted", "histogram"]
HISTOGRAM_MIN = 1 << 16  # entries: below this a sorted copy (8 bytes/entry) is smaller than the counts
BINS = 1 << 17  # histogram keys: two per value of the top 16 bits (``kernels.magnitude_key``)
SCAN = 1 << 22  # entries per eager pass when counting (bounds the temporaries)
FLAG_SOURCES = 8  # sources per flag pass (bits of a uint8)
SPARSE = 64  # flagged entries under 1/64 of a tensor: scan the flags a word at a time
TIE_SCAN = 1 << 20  # entries per tie-counting call (``HistogramCuts._tie_cut`` stops at the call that finds its tie)
TIE_KEYS = 256  # values per (tensor, source) whose ties are counted per block when the histogram is filled
TIE_BLOCKS = 256  # blocks of that count per tensor, at most (each a multiple of TIE_BLOCK entries)
# histogram keys in use per tensor and source, for the memory plan: |τ| of real weights spans a few dozen
# exponents, 256 keys each; at most 2**16 could be used
HISTOGRAM_KEYS = 1 << 13


@dataclass(frozen=True)
class Trim:
    """One source's cut for one tensor and candidate: keep |τ| > low, and |τ| == low at flat index < p."""

    low: float
    p: int


def tie_block(n: int) -> int:
    """Entries per block of a tensor's tie index: ``TIE_BLOCK``, or the multiple of it that makes at most
    ``TIE_BLOCKS`` blocks."""
    return -(-n // (TIE_BLOCKS * TIE_BLOCK)) * TIE_BLOCK


def tie_index_bytes(n: int) -> int:
    """Bytes of a (tensor, source) tie index at most: the memory plan's figure."""
    return TIE_KEYS * -(-n // tie_block(n)) * (4 if n < 2**31 else 8)


def sorted_bytes(n: int) -> int:
    """Bytes of a (tensor, source) sorted copy of n entries (``sorted_magnitudes``): float32 values and int32 flat
    indices (int64 from 2**31 entries)."""
    return n * (8 if n < 2**31 else 12)


def sort_scratch_bytes(n: int) -> int:
    """Bytes a sorted copy of n entries holds while it is made (|τ| and the sort's int64 order) besides the copy."""
    return 12 * n


def histogram_bytes(n: int) -> int:
    """Bytes of a (tensor, source) histogram mode's cache for n entries, estimated for the memory plan: the
    ``HISTOGRAM_KEYS`` used keys (a key and a count, int64 each) and the tie index; a tensor under
    ``HISTOGRAM_MIN`` entries keeps a sorted copy instead."""
    return HISTOGRAM_KEYS * 16 + tie_index_bytes(n) if n >= HISTOGRAM_MIN else sorted_bytes(n)


def cut_scratch_bytes(n: int) -> int:
    """Temporaries of finding the histogram mode's cuts of a tensor of n entries: a byte of flags per entry
    (``_scratch``), and counting ``SCAN`` entries at a time (int64 keys, rows and counts)."""
    return n + 3 * SCAN * 8


@dataclass(frozen=True)
class _TieIndex:
    """Where the ties of a tensor's most frequent |τ| values lie: per value, its entries up to the end of each block.
    A cut inside one of those groups then looks into one block instead of counting from an end of the tensor."""

    rows: dict[int, int]  # histogram key (of one value) -> row of ``ends``
    ends: Tensor  # [values, blocks]: entries equal to the value in blocks 0 … b
    block: int  # entries per block

    def find(self, key: int, rank: int) -> tuple[int, int] | None:
        """(first entry of the block holding that value's rank-th tie, ties before it), or None when it has no row."""
        row = self.rows.get(key)
        if row is None:
            return None
        ends = self.ends[row]
        b = int(torch.searchsorted(ends, torch.tensor(rank, dtype=ends.dtype, device=ends.device)))  # ends[b] >= rank
        return b * self.block, int(ends[b - 1]) if b else 0


@dataclass(frozen=True)
class _Counts:
    """|τ| counted per histogram key (``kernels.magnitude_key``; the used keys only, ascending). An even key is one
    value (its bit pattern's low bits are clear); an odd key may be many."""

    keys: Tensor  # int64, ascending
    ge: Tensor  # ge[j]: entries with keys >= keys[j]
    ties: _TieIndex | None  # None where no value is tied

    def locate(self, keep: int, dt: torch.dtype) -> tuple[int, int, int, float | None]:
        """(key holding rank ``keep``, entries under higher keys: all kept, entries under it, its one value or None)."""
        j = int(torch.searchsorted(-self.ge, torch.tensor(-keep, device=self.ge.device), right=True)) - 1
        above = int(self.ge[j + 1]) if j + 1 < self.ge.numel() else 0
        key = int(self.keys[j])
        value = None if key & 1 else _value(key_patterns(key, dt)[0], dt)
        return key, above, int(self.ge[j]) - above, value


class TrimCuts(ABC):
    """A worker's TIES cuts, with its cache: sorted copies (``SortedCuts``) or histograms (``HistogramCuts``)."""

    def cuts(self, name: str, densities: Sequence[float], base: Tensor, sources: Sequence[Tensor]) -> list[Trim]:
        """The cut of every source (flattened inputs, on the merging device)."""
        n = base.numel()
        keeps = [keep_count(d, n) for d in densities]
        trims: list[Trim | None] = [_trivial(keep, n) for keep in keeps]
        todo = [k for k, t in enumerate(trims) if t is None]
        if todo:
            for k, trim in self._cuts(name, todo, keeps, base, sources).items():
                trims[k] = trim
        return [t for t in trims if t is not None]

    @abstractmethod
    def _cuts(self, name: str, todo: list[int], keeps: list[int], base: Tensor,
              sources: Sequence[Tensor]) -> dict[int, Trim]:
        """The cuts of sources ``todo`` (source -> cut), each keeping ``keeps[k]`` entries, neither none nor all."""

    @abstractmethod
    def cache_bytes(self) -> int:
        """Bytes the cache holds now."""


def make_trim_cuts(mode: Thresholds, *, compiles: Callable[[int], bool], chunk: Callable[[int, bool], int]) -> TrimCuts:
    """The cuts of the memory plan's ``thresholds``. ``compiles(n)``: whether a tensor of n entries uses compiled
    kernels; ``chunk(n, compiled)``: entries per call (the histograms' passes)."""
    return SortedCuts() if mode == "sorted" else HistogramCuts(compiles=compiles, chunk=chunk)


class SortedCuts(TrimCuts):
    """Cuts from |τ_k| sorted once per (tensor, source): a lookup and two binary searches per cut."""

    def __init__(self) -> None:
        self._sorted: dict[tuple[str, int], tuple[Tensor, Tensor] | None] = {}

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for pair in self._sorted.values() if pair for t in pair)

    def sorted_magnitudes(self, name: str, k: int, base: Tensor, source: Tensor) -> tuple[Tensor, Tensor] | None:
        """|θ_k − θ0| flattened, stably sorted ascending: (values, flat indices), cached; None where θ_k = θ0 (a
        tensor the fine-tune left alone, as embeddings often are: nothing to sort, nothing to keep)."""
        key = (name, k)
        if key not in self._sorted:
            magnitudes = task_vector(base, source, compute_dtype(base)).abs_().flatten()
            if not magnitudes.any():
                self._sorted[key] = None
            else:
                values, order = sort_magnitudes(magnitudes)
                self._sorted[key] = (values, order.to(torch.int32) if order.numel() < 2**31 else order)
        return self._sorted[key]

    def _cuts(self, name: str, todo: list[int], keeps: list[int], base: Tensor,
              sources: Sequence[Tensor]) -> dict[int, Trim]:
        return {k: self._cut(name, k, keeps[k], base, sources[k]) for k in todo}

    def _cut(self, name: str, k: int, keep: int, base: Tensor, source: Tensor) -> Trim:
        magnitudes = self.sorted_magnitudes(name, k, base, source)
        if magnitudes is None:  # every |τ| is 0, one group of ties: the lowest flat indices are kept
            return Trim(0.0, keep)
        asc, order = magnitudes
        n = asc.numel()
        low = asc[n - keep : n - keep + 1]
        first = int(torch.searchsorted(asc, low, right=False))  # the group of |τ| == low is asc[first:stop]
        stop = int(torch.searchsorted(asc, low, right=True))
        need = keep - (n - stop)  # tied entries to keep, lowest flat index first
        if need == stop - first:
            return Trim(float(low), n)
        return Trim(float(low), int(order[first + need - 1]) + 1)


class HistogramCuts(TrimCuts):
    """Cuts from |τ_k| counted per histogram key (kilobytes per tensor and source; see the module docstring); a
    tensor under ``HISTOGRAM_MIN`` entries uses a sorted copy, which costs less."""

    def __init__(self, *, compiles: Callable[[int], bool], chunk: Callable[[int, bool], int]):
        self.compiles, self.chunk = compiles, chunk
        self._small = SortedCuts()
        self._counts: dict[tuple[str, int], _Counts] = {}
        self._flags: Tensor | None = None  # scratch of the flag pass, reused across tensors

    def cache_bytes(self) -> int:
        arrays = [t for c in self._counts.values() for t in (c.keys, c.ge)]
        arrays += [c.ties.ends for c in self._counts.values() if c.ties is not None]
        return self._small.cache_bytes() + sum(t.numel() * t.element_size() for t in arrays)

    def _cuts(self, name: str, todo: list[int], keeps: list[int], base: Tensor,
              sources: Sequence[Tensor]) -> dict[int, Trim]:
        if base.numel() < HISTOGRAM_MIN:
            return self._small._cuts(name, todo, keeps, base, sources)
        return self._from_counts(name, todo, keeps, base, sources)

    def counts(self, name: str, k: int, base: Tensor, source: Tensor) -> _Counts:
        """|θ_k − θ0| counted per histogram key, with its tie index (once per worker): kilobytes."""
        key = (name, k)
        if key not in self._counts:
            self._counts[key] = self._count(base, source)
        return self._counts[key]

    def _count(self, base: Tensor, source: Tensor) -> _Counts:
        """|θ_k − θ0| counted per histogram key: the keys from a kernel pass ``SCAN`` entries at a time (eagerly, the
        key alone took ten times the rest), then counted; and the tie index."""
        dt, n = compute_dtype(base), base.numel()
        counts = torch.zeros(BINS, dtype=torch.int64, device=base.device)
        kernel = chunk_kernel("magnitude_keys", self.compiles(n))
        keys = torch.empty(min(SCAN, n), dtype=torch.int64, device=base.device)
        for a in range(0, n, SCAN):
            e = min(a + SCAN, n)
            kernel(keys[: e - a], base[a:e], source[a:e], dt)
            counts += torch.bincount(keys[: e - a], minlength=BINS)
        used = torch.nonzero(counts).flatten()
        ties = self._index_ties(base, source, counts, dt)
        return _Counts(used, counts[used].flip(0).cumsum(0).flip(0), ties)

    def _index_ties(self, base: Tensor, source: Tensor, counts: Tensor, dt: torch.dtype) -> _TieIndex | None:
        """The tie index of the ``TIE_KEYS`` most frequent tied values (even keys: one value each), from a second pass
        that gives every entry its value's row (a compiled lookup) and counts the rows per block."""
        n = base.numel()
        order = torch.sort(counts[0::2], descending=True, stable=True)
        chosen = order.indices[:TIE_KEYS][order.values[:TIE_KEYS] > 1] * 2
        if not chosen.numel():
            return None
        width = chosen.numel() + 1  # the last row: every other key
        lut = torch.full((BINS,), width - 1, dtype=torch.int64, device=base.device)
        lut[chosen] = torch.arange(width - 1, device=base.device)
        kernel, block = chunk_kernel("value_rows", self.compiles(n)), tie_block(n)
        step = max(SCAN // block, 1) * block
        rows = torch.empty(min(step, n), dtype=torch.int64, device=base.device)
        blocks = []
        for a in range(0, n, step):
            e = min(a + step, n)
            kernel(rows[: e - a], base[a:e], source[a:e], lut, dt)
            blocks += [torch.bincount(rows[j : min(j + block, e - a)], minlength=width)[:-1]
                       for j in range(0, e - a, block)]
        ends = torch.stack(blocks, 1).cumsum(1).to(torch.int32 if n < 2**31 else torch.int64)
        return _TieIndex({int(key): row for row, key in enumerate(chosen)}, ends, block)

    def _from_counts(self, name: str, todo: list[int], keys: list[int], base: Tensor,
                     sources: Sequence[Tensor]) -> dict[int, Trim]:
        """Each source's cut from its counts: a cut bin of one value gives ``low`` at once, and a pass over the tensor
        only when the cut falls inside that group of ties (to find the last kept one); a bin of several values
        needs a pass that finds its entries (see the module docstring)."""
        n = base.numel()
        out: dict[int, Trim] = {}
        bins, above, flagged = {}, {}, 0
        for k in todo:
            counts = self.counts(name, k, base, sources[k])
            code, above[k], at, low = counts.locate(keys[k], compute_dtype(base))
            if low is None:
                bins[k] = code
                flagged += at
            elif keys[k] - above[k] == at:
                out[k] = Trim(low, n)  # the whole group at ``low`` is kept
            else:
                out[k] = self._tie_cut(counts.ties, code, base, sources[k], low, keys[k] - above[k], at)
        if bins:
            positions = self._flag(base, sources, bins, sparse=flagged * SPARSE < n)
            out.update({k: self._refine(keys[k] - above[k], base, sources[k], positions[k]) for k in bins})
        return out

    def _tie_cut(self, index: _TieIndex | None, code: int, base: Tensor, source: Tensor, low: float, need: int,
                 at: int) -> Trim:
        """The cut when it falls inside the ``at`` entries equal to ``low`` (histogram key ``code``): the need-th of
        them by flat index is the last kept. A frequent value's tie index names the block to look into. Otherwise
        ties are counted per block of ``TIE_BLOCK`` entries, ``TIE_SCAN`` entries per call, from whichever end of
        the tensor is nearer to that tie in rank, stopping at the call that reaches it (a quarter of the tensor on
        average, not all of it); then one block is looked into."""
        n = base.numel()
        if index is not None and (located := index.find(code, need)) is not None:
            lo, ahead = located
            return self._tie_in(base, source, low, lo, min(lo + index.block, n), need - ahead)
        dt = compute_dtype(base)
        forward = 2 * need <= at + 1
        rank = need if forward else at - need + 1  # the tie's rank counted from the end the scan starts at
        compiled = self.compiles(n)
        kernel, value = chunk_kernel("tie_counts", compiled), torch.tensor([low], dtype=dt, device=base.device)
        step = max(min(TIE_SCAN, self.chunk(n, compiled)) // TIE_BLOCK, 1) * TIE_BLOCK
        starts = range(0, n, step)
        seen = 0
        for a in starts if forward else reversed(starts):
            e = min(a + step, n)
            counts = self._block_counts(kernel, base[a:e], source[a:e], value, dt)
            total = int(counts.sum())
            if seen + total >= rank:
                break
            seen += total
        within = rank - seen if forward else total - (rank - seen) + 1  # its rank among this range's ties, from a
        before = torch.cat([torch.zeros(1, dtype=torch.int64, device=base.device), counts.cumsum(0)])
        block = int(torch.searchsorted(before, torch.tensor(within, device=base.device), right=False)) - 1
        lo = a + block * TIE_BLOCK
        return self._tie_in(base, source, low, lo, min(lo + TIE_BLOCK, e), within - int(before[block]))

    @staticmethod
    def _tie_in(base: Tensor, source: Tensor, low: float, lo: int, hi: int, rank: int) -> Trim:
        """The cut whose last kept tie is the rank-th entry of [lo, hi) with |τ| == low."""
        dt = compute_dtype(base)
        inside = torch.nonzero(task_vector(base[lo:hi], source[lo:hi], dt).abs() == low).flatten()
        return Trim(low, lo + int(inside[rank - 1]) + 1)

    @staticmethod
    def _block_counts(kernel: Callable[..., object], base: Tensor, source: Tensor, value: Tensor,
                      dt: torch.dtype) -> Tensor:
        """Entries equal to ``value`` per block of ``TIE_BLOCK`` entries of this range
        (its last block may be shorter)."""
        m = base.numel()
        whole = m // TIE_BLOCK * TIE_BLOCK
        counts = torch.zeros(-(-m // TIE_BLOCK), dtype=torch.int64, device=base.device)
        if whole:
            kernel(counts[: whole // TIE_BLOCK], base[:whole], source[:whole], value, dt)
        if whole < m:
            counts[-1] = (task_vector(base[whole:], source[whole:], dt).abs() == value).sum()
        return counts

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
            bounds = torch.tensor([key_patterns(bins[k], dt) for k in ks], device=base.device).T
            bounds = bounds.to(torch.int64 if dt == torch.float64 else torch.int32).contiguous()
            compiled = self.compiles(n)
            kernel, step = chunk_kernel("bin_flags", compiled), self.chunk(n, compiled)
            for a in range(0, n, step):
                e = min(a + step, n)
                kernel(flags[a:e], base[a:e], [sources[k][a:e] for k in ks], bounds, dt)
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
        values = task_vector(base[positions], source[positions], dt).abs()
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


def _value(bits: int, dt: torch.dtype) -> float:
    """The float whose bit pattern in ``dt`` is ``bits``."""
    return float(torch.tensor([bits], dtype=torch.int64 if dt == torch.float64 else torch.int32).view(dt)[0])


def _trivial(keep: int, n: int) -> Trim | None:
    """The cut when every entry or none is kept; None when a real cut is needed."""
    if keep >= n:
        return Trim(-math.inf, n)
    if keep <= 0:
        return Trim(math.inf, 0)
    return None
