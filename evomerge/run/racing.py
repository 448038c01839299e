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


def verdicts(members: Sequence[Items | None], keep: int, objectives: Sequence[Objective],
             z: float) -> list[Verdict | None]:
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


class ParetoRace:
    """Racing a generation against NSGA-II's survival of ``keep`` out of ``pool`` candidates: its members, the
    told candidates they compete with (``fixed``: the survivors so far, and earlier genomes asked again), and
    members' repeats asked in the generation (copies of a member, not raced themselves).

    A member is *below* once at least ``keep`` others confidently dominate it: each of them ranks in a front
    before its own, so the fronts before its own already hold ``keep``. It is *above* once it confidently
    dominates all but ``keep`` of the pool (its front and the earlier ones are among those ``keep``, so its front
    is taken whole), or once no other may dominate it while at most ``keep`` candidates may be non-dominated (the
    first front, its own, is taken whole). "Confidently dominates": better on every objective by ``z`` standard
    errors of the paired difference on common items; "may not dominate": confidently worse on some objective. A
    failed candidate is dominated by every scored one. A repeat counts as possibly non-dominated and dominates
    no one (it is a copy of a member). Comparisons are kept until a pair's common items grow, so a decision
    after one member's chunk compares that member only."""

    def __init__(self, keep: int, pool: int, z: float):
        self.keep, self.pool, self.z = keep, pool, z
        self.fixed: list[Items | None] = []
        self._signs: dict[tuple[int, int], tuple[tuple[int, ...], tuple[int, ...]]] = {}

    def verdicts(self, members: Sequence[Items | None], objectives: Sequence[Objective]) -> list[Verdict | None]:
        """Per member (None: it failed), whether it is resolved against the survival; None: not yet."""
        items = [*members, *self.fixed]
        n, repeats = len(items), self.pool - len(items)
        signs = [[self._sign(i, j, items, objectives) for j in range(n)] for i in range(n)]
        beats = [[i != j and _dominates(signs[i][j], items[i], items[j]) for j in range(n)] for i in range(n)]
        dominated = [sum(beats[j][i] for j in range(n)) for i in range(n)]
        open_front = sum(d == 0 for d in dominated) + repeats  # how many may be non-dominated
        out: list[Verdict | None] = []
        for i, m in enumerate(members):
            safe = all(j == i or items[j] is None or (m is not None and 1 in signs[i][j]) for j in range(n))
            if m is None or dominated[i] >= self.keep:
                out.append(Verdict.BELOW)
            elif sum(beats[i]) >= self.pool - self.keep or (safe and open_front <= self.keep):
                out.append(Verdict.ABOVE)
            else:
                out.append(None)
        return out

    def _sign(self, i: int, j: int, items: Sequence[Items | None], objectives: Sequence[Objective]) -> tuple[int, ...]:
        """Per objective, +1 where ``i`` is confidently better than ``j``, −1 where worse, 0 where unresolved."""
        if i > j:
            return tuple(-s for s in self._sign(j, i, items, objectives))
        a, b = items[i], items[j]
        if i == j or a is None or b is None:
            return (0,) * len(objectives)
        common = tuple(min(len(va), len(vb)) for va, vb in zip(a, b, strict=True))
        cached = self._signs.get((i, j))
        if cached is None or cached[0] != common:
            diffs = [paired_difference([replace(o, weight=1.0)], [va], [vb])
                     for o, va, vb in zip(objectives, a, b, strict=True)]
            cached = common, tuple(1 if d.above(self.z) else -1 if d.below(self.z) else 0 for d in diffs)
            self._signs[(i, j)] = cached
        return cached[1]


def _dominates(signs: tuple[int, ...], a: Items | None, b: Items | None) -> bool:
    """Whether ``a`` confidently dominates ``b`` (a failed candidate is dominated by every scored one)."""
    return a is not None and (b is None or all(s == 1 for s in signs))


def race_items(objectives: Sequence[ObjectiveConfig],
               scores: Scores) -> tuple[list[Objective], list[tuple[float, ...]]]:
    """The objectives as partial fitness sees them (pooling, orientation, share of the weight) and a member's
    raw search-metric values on its scored items."""
    total = sum(o.weight for o in objectives)
    specs, items = [], []
    for o in objectives:
        score = score_of(o, scores, "calibration")
        metric = metric_name(o, score, search=True)
        specs.append(Objective(pool_of(metric), 1.0 if higher_is_better(o, score, search=True) else -1.0,
                               o.weight / total))
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


    def in_chunk_order(self, scores: Scores) -> dict[str, TaskScore]:
        """A full score (documents in their order) with its per-item values in chunk order: its prefixes pair
        with a raced member's (calibration tasks only)."""
        return {t: replace(s, per_item={k: tuple(v[i] for i in self.orders[t]) for k, v in s.per_item.items()})
                for t, s in scores.items() if t in self.orders}

    def in_document_order(self, scores: Scores) -> dict[str, TaskScore]:
        """Every chunk's scores (``partial.combine``) back in document order, each metric pooled over them as
        lm-eval pools it in that order (a chunk's per-item values can differ from one job's in the last bits: its
        forwards are batched differently)."""
        out = {}
        for t, s in scores.items():
            order = self.orders[t]
            per_item = {}
            for k, v in s.per_item.items():
                doc = [0.0] * len(v)
                for i, value in zip(order, v, strict=True):
                    doc[i] = value
                per_item[k] = tuple(doc)
            out[t] = replace(s, per_item=per_item,
                             metrics={k: pooled(pool_of(k.split(",")[0]), v) for k, v in per_item.items()})
        return out


def scored_items(scores: Scores | None) -> int:
    """Items (documents, all tasks) these scores hold."""
    return sum(len(next(iter(s.per_item.values()), ())) for s in (scores or {}).values())


def full_cost(records: Sequence[CandidateRecord]) -> tuple[int, int | None] | None:
    """(calibration items, tokens) of one candidate scored in full (all tasks), read off a fully scored record
    (tokens None where the log predates their counting); None: no such record yet."""
    for r in records:
        if r.items is None and r.scores is not None:
            return scored_items(r.scores), r.tokens
    return None


@dataclass(frozen=True)
class Cost:
    """What the evaluated (not cached) candidates were scored on, against what full scoring scores."""

    candidates: int
    items: int
    full_items: int
    tokens: int | None  # None: some record predates token counting
    full_tokens: int | None

    @property
    def saved(self) -> float:
        """The fraction of tokens (items where tokens are not known) racing did not score."""
        scored, full = (self.tokens, self.full_tokens) if self.tokens is not None and self.full_tokens else (
            self.items, self.full_items)
        return 1 - scored / full if full else 0.0


def scoring_cost(records: Sequence[CandidateRecord]) -> Cost | None:
    """The search's scoring cost, from the log alone (so it survives resume); None before a full score exists."""
    full = full_cost(records)
    if full is None:
        return None
    evaluated = [r for r in records if r.cached_from is None]
    items = sum(full[0] if r.items is None else r.items for r in evaluated)
    known = full[1] is not None and all(r.tokens is not None for r in evaluated)
    tokens = sum(r.tokens or 0 for r in evaluated) if known else None
    return Cost(len(evaluated), items, full[0] * len(evaluated), tokens,
                full[1] * len(evaluated) if known and full[1] is not None else None)


def scoring_summary(scoring: ScoringConfig, records: Sequence[CandidateRecord]) -> str | None:
    """Calibration items and tokens the candidates were scored on, in total and per candidate, and what racing
    saved (status and report)."""
    cost = scoring_cost(records)
    if cost is None:
        return None
    mode = (f"racing (chunks of {scoring.chunk_items} items, z {scoring.racing_z:g})" if scoring.fidelity == "racing"
            else "full")
    n = max(cost.candidates, 1)
    line = (f"{mode}: {cost.items:,} of {cost.full_items:,} calibration items scored "
            f"({cost.items / n:,.0f} per candidate of {cost.full_items / n:,.0f})")
    if cost.tokens is not None and cost.full_tokens is not None:
        line += (f", {cost.tokens:,} of {cost.full_tokens:,} tokens "
                 f"({cost.tokens / n:,.0f} per candidate of {cost.full_tokens / n:,.0f})")
    return line + f"; {cost.saved:.0%} saved"
