"""Racing a generation against its selection cut (``scoring.fidelity: racing``; docs/SCORING.md, "Cheap fitness").

A ranking strategy keeps the best μ of a generation (``Strategy.selection``). Its members are scored in
chunks of items that every candidate reads in the same seeded order (``scoring.partial``); after each chunk
the driver ranks the generation on the items scored so far and compares each member with the member on the
other side of the cut — the (μ+1)-th for one ranked in the top μ, the μ-th for the others — on the items
both have scored (paired). A member whose difference is confidently positive (above) or negative (below)
at ``z`` standard errors stops; the others go on until they are resolved or every item is scored.

Everything here is a function of scores the run log holds, so a resumed run makes the same decisions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum

from evomerge.config.search import ObjectiveConfig, ScoringConfig
from evomerge.run.records import CandidateRecord
from evomerge.scoring.objectives import higher_is_better, metric_name, score_of
from evomerge.scoring.partial import (
    Objective,
    chunk_bounds,
    fitness,
    item_order,
    n_chunks,
    paired_difference,
    pool_of,
    pooled,
)
from evomerge.scoring.result import TaskScore

Scores = Mapping[str, TaskScore]
Items = Sequence[Sequence[float]]  # per objective, a member's search-metric values on the items it has scored


class Verdict(Enum):
    ABOVE = "above"  # confidently among the kept: its estimate is enough
    BELOW = "below"  # confidently outside the kept


def verdicts(members: Sequence[Items | None], keep: int, objectives: Sequence[Objective], z: float) -> list[Verdict | None]:
    """Per member of a generation (None: it failed, and ranks last), whether it is resolved against the cut
    between the ``keep``-th and the next member; None: not yet. Failed members are below; with no more
    scored members than ``keep`` every one is kept and none needs resolving."""
    scored = [i for i, m in enumerate(members) if m is not None]
    out: list[Verdict | None] = [Verdict.BELOW if m is None else None for m in members]
    if len(scored) <= keep:
        return out
    ranked = sorted(scored, key=lambda i: (-fitness(objectives, members[i]), i))  # type: ignore[arg-type]
    rank = {i: r for r, i in enumerate(ranked)}
    last_kept, first_out = ranked[keep - 1], ranked[keep]
    for i in scored:
        inside = rank[i] < keep
        d = paired_difference(objectives, members[i], members[first_out if inside else last_kept])  # type: ignore[arg-type]
        if inside and d.above(z):
            out[i] = Verdict.ABOVE
        elif not inside and d.below(z):
            out[i] = Verdict.BELOW
    return out


def race_items(objectives: Sequence[ObjectiveConfig], scores: Scores) -> tuple[list[Objective], list[tuple[float, ...]]]:
    """The objectives as partial fitness sees them (pooling, orientation, share of the weight) and a member's
    raw search-metric values on its scored items."""
    total = sum(o.weight for o in objectives)
    specs, items = [], []
    for o in objectives:
        score = score_of(o, scores, "calibration")
        metric = metric_name(o, score, search=True)
        specs.append(Objective(pool_of(metric), 1.0 if higher_is_better(o, score, search=True) else -1.0, o.weight / total))
        items.append(score.per_item[score.key(metric, o.filter)])
    return specs, items


@dataclass(frozen=True)
class Chunks:
    """Which items each chunk of a candidate holds: per calibration task, its seeded order and chunk ends."""

    orders: Mapping[str, tuple[int, ...]]
    bounds: Mapping[str, tuple[int, ...]]
    count: int

    @classmethod
    def plan(cls, sizes: Mapping[str, int], chunk_items: int, seed: int) -> Chunks:
        """``sizes``: calibration task -> its number of items, in the objectives' order."""
        count = n_chunks(list(sizes.values()), chunk_items)
        return cls(orders={t: item_order(n, seed, i) for i, (t, n) in enumerate(sizes.items())},
                   bounds={t: chunk_bounds(n, count) for t, n in sizes.items()}, count=count)

    def items(self, k: int) -> dict[str, tuple[int, ...]]:
        """Chunk ``k``: task -> the positions of its documents (tasks with none in this chunk left out)."""
        return {t: order[self.bounds[t][k]:self.bounds[t][k + 1]] for t, order in self.orders.items()
                if self.bounds[t][k + 1] > self.bounds[t][k]}

    def n_items(self, k: int) -> int:
        """Items of all tasks in the first ``k`` chunks."""
        return sum(b[k] for b in self.bounds.values())

    def slice(self, scores: Scores, k: int) -> dict[str, TaskScore] | None:
        """Chunk ``k``'s scores out of a logged candidate's scores (chunks concatenated in order); None where
        the log holds no values for it (the chunk failed before scoring)."""
        out = {}
        for t, (lo, hi) in ((t, (b[k], b[k + 1])) for t, b in self.bounds.items()):
            if hi == lo:
                continue
            if t not in scores or any(len(v) < hi for v in scores[t].per_item.values()):
                return None
            per_item = {key: v[lo:hi] for key, v in scores[t].per_item.items()}
            metrics = {key: pooled(pool_of(key.split(",")[0]), v) for key, v in per_item.items()}
            out[t] = replace(scores[t], per_item=per_item, metrics=metrics)
        return out


def items_per_candidate(records: Sequence[CandidateRecord]) -> int | None:
    """Calibration items a candidate scored in full (all tasks), read off a fully scored record; None: none yet."""
    for r in records:
        if r.items is None and r.scores is not None:
            return sum(len(next(iter(s.per_item.values()), ())) for s in r.scores.values())
    return None


def items_scored(records: Sequence[CandidateRecord]) -> tuple[int, int] | None:
    """(items scored, items full scoring would have scored) over the evaluated (not cached) candidates."""
    full = items_per_candidate(records)
    if full is None:
        return None
    evaluated = [r for r in records if r.cached_from is None]
    return sum(full if r.items is None else r.items for r in evaluated), full * len(evaluated)


def scoring_summary(scoring: ScoringConfig, records: Sequence[CandidateRecord]) -> str | None:
    """How many calibration items the candidates were scored on, and what racing saved (status and report)."""
    counted = items_scored(records)
    if counted is None:
        return None
    scored, full = counted
    mode = f"racing (chunks of {scoring.chunk_items} items, z {scoring.racing_z:g})" if scoring.fidelity == "racing" else "full"
    return f"{mode}: {scored:,} of {full:,} calibration items scored" + (f" ({1 - scored / full:.0%} saved)" if full else "")
