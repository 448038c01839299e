"""Scores relative to the best expert: what run reports and the zoo's checks call "mean normalized".

For each objective (its metric read off the task of a split by ``scoring.objectives.raw_values``) a
score is normalized by the best single source model's score on that same task:

    normalized = score / best_source          (higher is better)
    normalized = best_source / score          (lower is better)

so 1.0 means "as good as the best expert there", above 1.0 better. A ratio is only meaningful for
positive scores; where the reference (or, for lower-is-better, the score) is not positive the
normalized value is NaN and means skip it.

A family of fixed recipes is represented by its best member on calibration (``Normalizer.best``):
the reports' baselines and the zoo's conditions choose with that one rule, never on held-out data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence, TypeVar

T = TypeVar("T")


def mean(values: Sequence[float]) -> float:
    """Mean of the finite values; NaN when there is none."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


@dataclass(frozen=True)
class Normalizer:
    """Best single source per objective and split, and the ratios against it."""

    higher: tuple[bool, ...]
    reference: dict[str, tuple[float, ...]]  # split -> best source's raw value per objective (NaN: none)

    @classmethod
    def from_sources(cls, higher: Sequence[bool],
                     sources: Mapping[str, Sequence[tuple[float, ...] | None]]) -> "Normalizer":
        """``sources``: split -> each source's raw values (None where it failed)."""
        reference = {}
        for split, rows in sources.items():
            ok = [r for r in rows if r is not None]
            best = []
            for j, up in enumerate(higher):
                col = [r[j] for r in ok if math.isfinite(r[j])]
                best.append((max(col) if up else min(col)) if col else math.nan)
            reference[split] = tuple(best)
        return cls(tuple(higher), reference)

    def normalize(self, raw: Sequence[float] | None, split: str) -> tuple[float, ...]:
        if raw is None:
            return tuple(math.nan for _ in self.higher)
        out = []
        for v, ref, up in zip(raw, self.reference.get(split, ()), self.higher, strict=False):
            if up:
                out.append(v / ref if ref > 0 else math.nan)
            else:
                out.append(ref / v if v > 0 and ref > 0 else math.nan)
        return tuple(out)

    def mean(self, raw: Sequence[float] | None, split: str) -> float:
        """Mean normalized score over the objectives (NaN when nothing could be normalized)."""
        return mean(self.normalize(raw, split))

    def rank(self, raw: Sequence[float] | None, split: str) -> tuple[float, float]:
        """Sort key, higher is better: the mean normalized score, then the mean oriented raw score
        (which decides where nothing can be normalized); a failed evaluation ranks last."""
        if raw is None:
            return (-math.inf, -math.inf)
        oriented = mean([v if up else -v for v, up in zip(raw, self.higher, strict=True)])
        return (rank_key(self.mean(raw, split)), rank_key(oriented))

    def best(self, members: Sequence[tuple[T, Sequence[float] | None]], split: str = "calibration") -> T:
        """The member whose raw values rank highest on ``split`` (ties: the first): how a family of fixed
        recipes picks the member that stands for it."""
        return max(members, key=lambda member: self.rank(member[1], split))[0]


def rank_key(value: float) -> float:
    """Sort key for 'higher is better' values where NaN (unknown) ranks last."""
    return value if math.isfinite(value) else -math.inf
