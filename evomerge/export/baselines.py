"""The fixed recipes every report shows beside the search (docs/DESIGN.md, "Baselines"), scored in the same run.

The families are ``evomerge.recipes.fixed``'s: the base, each source alone, the uniform soup, and task
arithmetic, TIES and DARE-TIES over their grids (the standard ones, or the config's ``baselines``). Each member is
an ordinary Recipe over the run's base and sources, evaluated by the run's own workers on the same tasks as the
candidates, and cached in the run log as a ``BaselineRecord`` — a later export or report reuses the record whose
name, split and recipe all match, and never scores it again. A member the search started from (a seed point that
merges exactly as the member does) takes that candidate's calibration scores from the log instead. A grid family's
members are scored on calibration; the one with the best mean normalized calibration score (ties: the first) is
scored on held-out and shown in tables — chosen without looking at held-out data. The greedy soup (``greedy_soup``)
is chosen on calibration too and scored on held-out like a grid's choice.

The grids are raced (docs/SCORING.md, "Cheap fitness"): a family's members are scored in the search's chunks of
common items, the most promising first, and a member stops once its mean normalized score on the items scored so
far is ``scoring.racing_z`` standard errors below the family's best member scored in full (paired, on common
items). Only members scored on every item are chosen from, so the choice is the one full scoring makes unless a
stopped member would have been the best — which racing makes unlikely, not impossible. A stopped member's
record holds its chunks (``chunks``, ``items``); tables show its estimate as one.

What does not depend on other scores is handed to the workers together (``Evaluate.many``), so that several
workers share it: first the single rows on both splits (RegMean's and Fisher's first, so that their statistics
start at once) with every grid member's first chunk (``first_batch``; the chunk plan is read off a candidate the
search scored on every item), then the rest of each race member by member, then the chosen rows on held-out.
Records are appended in request order, never in the order workers finish.

"Base alone" and "source alone" go through the same merge path as every candidate rather than
being loaded from their folders: the arithmetic is exact, so the scores are those of the folders,
and one code path scores everything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from evomerge.config.search import SearchConfig
from evomerge.execution.worker import Outcome
from evomerge.export.evaluator import Evaluate, Request
from evomerge.recipes import Recipe, recipe_data
from evomerge.recipes.fixed import (
    CALIBRATED_FAMILIES,
    DENSITIES,
    GRID_FAMILIES,
    LAMBDAS,
    FixedRecipe,
    calibrated_recipes,
    fixed_recipes,
    merges,
    soup_of,
    source_name,
)
from evomerge.run.log import RunLog
from evomerge.run.racing import Chunks
from evomerge.run.records import BaselineRecord, CandidateRecord
from evomerge.scoring.normalize import Normalizer
from evomerge.scoring.objectives import SPLITS, metric_name, raw_values, score_of
from evomerge.scoring.partial import Objective, combine, fitness, paired_difference, pool_of
from evomerge.scoring.result import TaskScore

Raw = tuple[float, ...] | None  # raw values per objective; None: failed
# Items of each objective a grid member is scored on before it may stop: on fewer, the standard error is itself
# too rough (tiny families' perplexities stopped their family's best after 2 items a task).
MIN_PAIRED_ITEMS = 8
Scores = Mapping[str, TaskScore]


@dataclass(frozen=True)
class BaselineScores:
    fixed: FixedRecipe
    calibration: Raw
    heldout: Raw
    error: str | None = None

    @property
    def name(self) -> str:
        return self.fixed.name

    @property
    def label(self) -> str:
        return self.fixed.label


@dataclass(frozen=True)
class Baselines:
    rows: tuple[BaselineScores, ...]  # table order: base, sources, soup, then each grid family's chosen member
    grids: dict[str, tuple[tuple[FixedRecipe, Raw], ...]]  # grid family -> every member's calibration values
    normalizer: Normalizer  # best single source per objective and split
    stopped: Mapping[str, int] = field(default_factory=dict)  # raced members stopped early -> items scored (estimates)

    def best_fixed(self, split: str) -> BaselineScores:
        """The row with the best mean normalized score on ``split`` among the merges
        (not the base or a source alone)."""
        return self.normalizer.best([(r, getattr(r, split)) for r in self.rows if merges(r.fixed.family)], split)


def recipe_of(cfg: SearchConfig, fixed: FixedRecipe, statistics: Path | None = None) -> Recipe:
    """``fixed`` over the run's models; ``statistics``: the run's statistics folder, for a method that needs it."""
    return fixed.recipe(cfg.sources.base, cfg.sources.models, layer_granularity=cfg.genome.layer_granularity,
                        dtype=cfg.genome.dtype, seed=cfg.seed, statistics=statistics)


class Rows:
    """Baselines wanted on a split each (no two alike): the log's record, the search's own scores where it started
    from this recipe (on calibration), or one of ``requests`` — whose outcomes ``logged`` appends in ``wanted``'s
    order, so that the caller can hand the requests over together with others."""

    def __init__(self, run: RunLog, wanted: Sequence[tuple[FixedRecipe, str]]):
        self.run, self.wanted = run, list(wanted)
        self.recipes = [recipe_of(run.config(), fixed, run.statistics_dir) for fixed, _ in wanted]
        self.found = [from_log(run, fixed, split, recipe)
                      for (fixed, split), recipe in zip(wanted, self.recipes, strict=True)]
        self.missing = [k for k, record in enumerate(self.found) if record is None]
        self.requests = [Request(self.recipes[k], wanted[k][1], f"baseline {wanted[k][0].label}") for k in self.missing]

    def logged(self, outcomes: Sequence[Outcome]) -> dict[tuple[str, str], BaselineRecord]:
        """(name, split) -> record of every wanted row, those of ``outcomes`` (one per request) appended first."""
        for k, outcome in zip(self.missing, outcomes, strict=True):
            (fixed, split), want = self.wanted[k], recipe_data(self.recipes[k])
            self.found[k] = self.run.append(BaselineRecord(fixed.name, split, want, outcome.scores,  # type: ignore[arg-type]
                                                           outcome.error, tokens=outcome.tokens))
        return {(fixed.name, split): record for (fixed, split), record in zip(self.wanted, self.found, strict=True)
                if isinstance(record, BaselineRecord)}


def cached_or_scored(run: RunLog, wanted: Sequence[tuple[FixedRecipe, str]],
                     evaluate: Evaluate) -> dict[tuple[str, str], BaselineRecord]:
    """``Rows`` of ``wanted``, the missing ones scored side by side: (name, split) -> record."""
    rows = Rows(run, wanted)
    return rows.logged(evaluate.many(rows.requests))


def from_log(run: RunLog, fixed: FixedRecipe, split: str, recipe: Recipe) -> BaselineRecord | None:
    """The log's record of this baseline on this split, or the search's own scores where it started from this
    recipe (on calibration); None when it has to be scored."""
    want = recipe_data(recipe)
    logged = logged_full(run, fixed.name, split, want)
    if logged is not None:
        return logged
    start = scored_start(run, recipe) if split == "calibration" else None
    if start is None:
        return None
    return BaselineRecord(fixed.name, split, want, start.scores, start.error)  # type: ignore[arg-type]


def logged_records(run: RunLog, name: str, split: str, want: Mapping[str, Any]) -> list[BaselineRecord]:
    """The log's records of this baseline on this split, in log order: in full or a raced member's chunks."""
    return [r for r in run.baselines() if (r.name, r.split, r.recipe) == (name, split, want)]


def logged_full(run: RunLog, name: str, split: str, want: Mapping[str, Any]) -> BaselineRecord | None:
    """The log's record of this baseline on this split scored on every item (not a raced member's chunks)."""
    return next((r for r in logged_records(run, name, split, want) if r.items is None), None)


def scored_start(run: RunLog, recipe: Recipe) -> CandidateRecord | None:
    """The search's start point (scored on every calibration item) that merges exactly as ``recipe``, if any."""
    space = run.space()
    for r in run.candidates():
        if (r.operator == "init" and r.cached_from is None and r.items is None
                and space.to_recipe(r.x).same_merge(recipe)):
            return r
    return None


def evaluate_baselines(run: RunLog, evaluate: Evaluate, higher: Sequence[bool], *, race: bool = True) -> Baselines:
    """Score (or read back) every baseline on calibration, choose each grid's best, score the table on held-out.
    ``race``: race the grids (the default); False scores every member on every item."""
    cfg = run.config()
    labels = cfg.sources.labels()
    grid = cfg.baselines
    families = fixed_recipes(len(cfg.sources.models), tuple(labels[m] for m in cfg.sources.models),
                             lambdas=grid.lambdas or LAMBDAS, densities=grid.densities or DENSITIES)
    families |= calibrated_recipes(len(cfg.sources.models))

    def calibration(fixed: FixedRecipe) -> BaselineRecord:
        return cached_or_scored(run, [(fixed, "calibration")], evaluate)[fixed.name, "calibration"]

    def both(fixed: Sequence[FixedRecipe]) -> list[BaselineScores]:
        """Calibration and held-out rows of ``fixed``, scored side by side: every calibration job first, so that
        workers start on different recipes (a worker takes the held-out job of the recipe it holds next)."""
        return table_rows(cfg, fixed, cached_or_scored(run, [(f, split) for split in SPLITS for f in fixed], evaluate))

    single = [members[0] for family, members in families.items() if family not in GRID_FAMILIES]
    races = grid_races(run, evaluate, families, [r.scores for r in run.candidates() if r.ok and r.items is None]) \
        if race else {}
    singles = table_rows(cfg, single, first_batch(run, evaluate, single, list(races.values())))
    normalizer = Normalizer.from_sources(higher, {
        split: [getattr(r, split) for r in singles if r.fixed.family.startswith("source")] for split in SPLITS
    })
    if race and not races:  # no candidate scored on every item: the single rows give the chunk plan
        races = grid_races(run, evaluate, families, [calibration(f).scores for f in single])
    grids, stopped = {}, {}
    for family in GRID_FAMILIES:
        if family in races:
            scores = races[family].race(normalizer)
            stopped.update(races[family].stopped)
        else:
            records = cached_or_scored(run, [(m, "calibration") for m in families[family]], evaluate)
            scores = {m.name: records[m.name, "calibration"].scores for m in families[family]}
        grids[family] = tuple((m, raw_values(cfg.objectives, scores[m.name], "calibration")) for m in families[family])
    chosen = [normalizer.best([item for item in grid if item[0].name not in stopped], "calibration")
              for grid in grids.values()]

    def rank(fixed: FixedRecipe) -> tuple[float, float]:
        return calibration_rank(normalizer, cfg, calibration(fixed).scores)

    k, names = len(cfg.sources.models), tuple(labels[m] for m in cfg.sources.models)
    order = sorted(range(k), key=lambda i: rank(families[source_name(i)][0]), reverse=True)  # ties: source order
    greedy = greedy_soup(order, lambda members: soup_of(members, k, names), rank)
    return Baselines((*singles, *both([*chosen, greedy])), grids, normalizer, stopped)


def table_rows(cfg: SearchConfig, fixed: Sequence[FixedRecipe],
               records: Mapping[tuple[str, str], BaselineRecord]) -> list[BaselineScores]:
    """The table's rows of ``fixed`` from their records on both splits ((name, split) -> record)."""
    return [BaselineScores(f, raw_values(cfg.objectives, cal.scores, "calibration"),
                           raw_values(cfg.objectives, held.scores, "heldout"), cal.error or held.error)
            for f in fixed for cal, held in [(records[f.name, "calibration"], records[f.name, "heldout"])]]


def grid_races(run: RunLog, evaluate: Evaluate, families: Mapping[str, Sequence[FixedRecipe]],
               full: Sequence[Scores | None]) -> dict[str, "GridRace"]:
    """A race per grid family, in chunks planned from ``full`` (scores on every calibration item, the first that is
    not None); none where there are none (the grids are then scored in full)."""
    cfg = run.config()
    sizes = calibration_sizes(cfg, full)
    if sizes is None:
        return {}
    chunks = Chunks.plan(sizes, cfg.scoring.chunk_items, cfg.seed)
    return {family: GridRace(run, evaluate, chunks, families[family]) for family in GRID_FAMILIES}


def first_batch(run: RunLog, evaluate: Evaluate, single: Sequence[FixedRecipe],
                races: Sequence["GridRace"]) -> dict[tuple[str, str], BaselineRecord]:
    """The single rows on both splits and every race's opening chunks, handed over together; the rows with
    statistics to compute come first (both splits: their statistics start at once, and a second worker shares
    them). Returns the rows' records ((name, split) -> record); the races keep their chunks."""
    calibrated = [f for f in single if f.family in CALIBRATED_FAMILIES]
    rows = Rows(run, [(f, split) for group in (calibrated, [f for f in single if f not in calibrated])
                      for split in SPLITS for f in group])
    openings = [grid.opening() for grid in races]
    outcomes = evaluate.many([*rows.requests, *(r for opening in openings for r in opening)])
    done = len(rows.requests)
    for grid, opening in zip(races, openings, strict=True):
        grid.opened(outcomes[done:done + len(opening)])
        done += len(opening)
    return rows.logged(outcomes[:len(rows.requests)])


def greedy_soup(order: Sequence[int], soup: Callable[[Sequence[int]], FixedRecipe],
                rank: Callable[[FixedRecipe], tuple[float, float]]) -> FixedRecipe:
    """Wortsman et al.'s greedy soup (Model soups, ICML 2022): the sources in ``order`` (best calibration score
    first), each added to the soup only if the soup's calibration score does not drop; ``soup(members)`` is the
    uniform soup of those sources and ``rank`` its calibration score (higher is better)."""
    chosen = [order[0]]
    best = rank(soup(chosen))
    for i in order[1:]:
        score = rank(soup([*chosen, i]))
        if score >= best:
            chosen, best = [*chosen, i], score
    return soup(chosen)


def calibration_rank(normalizer: Normalizer, cfg: SearchConfig, scores: Scores | None) -> tuple[float, float]:
    """How a grid's choice ranks scores on calibration (higher is better; a failure last): the greedy soup and the
    grid race rank with it."""
    return normalizer.rank(raw_values(cfg.objectives, scores, "calibration"), "calibration")


def calibration_sizes(cfg: SearchConfig, full: Sequence[Scores | None]) -> dict[str, int] | None:
    """Each calibration task's number of items (the objectives' order), read off scores on every item (a candidate's
    or a baseline's); None when there are none (the grids are then scored in full)."""
    scores = next((s for s in full if s is not None), None)
    if scores is None:
        return None
    tasks = dict.fromkeys(o.task_for("calibration") for o in cfg.objectives)
    return {t: len(next(iter(scores[t].per_item.values()), ())) for t in tasks}


@dataclass
class _Member:
    fixed: FixedRecipe
    recipe: Recipe
    full: Scores | None = None  # every item, documents in their order
    parts: list[Scores] = field(default_factory=list)  # chunks scored, in order
    tokens: int = 0
    error: str | None = None
    new: bool = False  # this export scored some of it: its record is to be logged


class GridRace:
    """One grid family raced on calibration against its best member scored in full (see the module's docstring)."""

    def __init__(self, run: RunLog, evaluate: Evaluate, chunks: Chunks, members: Sequence[FixedRecipe]):
        self.run, self.cfg, self.evaluate, self.chunks = run, run.config(), evaluate, chunks
        self.state = [self._from_log(m) for m in members]
        self.stopped: dict[str, int] = {}  # member name -> items scored
        self.normalizer: Normalizer  # the single rows' (best source per objective), given to ``race``

    def opening(self) -> list[Request]:
        """The first chunk of each member with nothing scored: to take the most promising first. The caller may hand
        them over with other work; ``opened`` takes their outcomes."""
        return [self._request(m, 0) for m in self._unopened()]

    def opened(self, outcomes: Sequence[Outcome]) -> None:
        """The outcomes of ``opening()``'s requests, in their order."""
        self._scored(self._unopened(), outcomes)

    def race(self, normalizer: Normalizer) -> dict[str, Scores | None]:
        """Each member's calibration scores: every item, or the chunks it was stopped after (an estimate);
        ``normalizer``: the single rows' (best source per objective)."""
        self.normalizer, state = normalizer, self.state
        self.opened(self.evaluate.many(self.opening()))  # nothing to do where the caller opened the race
        specs = self._specs([m.full for m in state if m.full is not None]
                            + [combine(m.parts) for m in state if m.parts])
        open_ = [m for m in state if m.full is None and m.error is None]
        for m in sorted(open_, key=lambda m: -fitness(specs, self._items(m)) if specs else 0.0):
            while m.error is None and m.full is None and m.fixed.name not in self.stopped:
                best = self._best(state)
                if len(m.parts) == self.chunks.count:
                    self._complete(m, best)
                elif specs is None or best is None:
                    self._score_all(m)
                elif self._below(m, best, specs):
                    self.stopped[m.fixed.name] = self.chunks.n_items(len(m.parts))
                else:
                    self._score(m, len(m.parts))
            self._log(m)
        for m in state:  # those that failed on their first chunk
            self._log(m)
        return {m.fixed.name: m.full if m.full is not None or m.error is not None else combine(m.parts) for m in state}

    def _from_log(self, fixed: FixedRecipe) -> _Member:
        """A member as the log has it: scored in full (by an earlier export, or as one of the search's start points;
        or failed), or on some chunks (an earlier export stopped it)."""
        m = _Member(fixed, recipe_of(self.cfg, fixed, self.run.statistics_dir))
        want = recipe_data(m.recipe)
        logged = logged_full(self.run, fixed.name, "calibration", want) or scored_start(self.run, m.recipe)
        if logged is not None:
            m.full, m.error = logged.scores, logged.error
            return m
        raced = logged_records(self.run, fixed.name, "calibration", want)
        if raced and raced[-1].scores is not None:
            slices = [self.chunks.slice(raced[-1].scores, k) for k in range(raced[-1].chunks or 0)]
            m.parts, m.tokens = [part for part in slices if part is not None], raced[-1].tokens or 0
        return m

    def _unopened(self) -> list[_Member]:
        return [m for m in self.state if m.full is None and m.error is None and not m.parts]

    def _request(self, m: _Member, k: int) -> Request:
        return Request(m.recipe, "calibration", f"baseline {m.fixed.label}, chunk {k + 1}/{self.chunks.count}",
                       self.chunks.items(k))

    def _score(self, m: _Member, k: int) -> None:
        self._scored([m], self.evaluate.many([self._request(m, k)]))

    def _scored(self, members: Sequence[_Member], outcomes: Sequence[Outcome]) -> None:
        """Each member's next chunk, scored (``outcomes``, one per member)."""
        for m, outcome in zip(members, outcomes, strict=True):
            m.tokens, m.new = m.tokens + outcome.tokens, True
            if outcome.scores is None:
                m.error = outcome.error
            else:
                m.parts.append(outcome.scores)

    def _complete(self, m: _Member, best: _Member | None) -> None:
        """A member scored on every chunk: its chunks in document order; scored again in one job where it would
        become the family's best, so that the chosen member always has full scoring's numbers exactly."""
        full = self.chunks.in_document_order(combine(m.parts))
        if best is None or self._rank(full) > self._rank(best.full):
            self._score_all(m)
        else:
            m.full = full

    def _rank(self, scores: Scores | None) -> tuple[float, float]:
        return calibration_rank(self.normalizer, self.cfg, scores)

    def _score_all(self, m: _Member) -> None:
        """One job on every item, for a member with nothing to race against (the family's first, or a grid that
        cannot be raced): its numbers are those of full scoring exactly (chunks batch the forwards differently)."""
        outcome = self.evaluate.many([Request(m.recipe, "calibration", f"baseline {m.fixed.label}")])[0]
        m.tokens, m.new = m.tokens + outcome.tokens, True
        m.full, m.error, m.parts = outcome.scores, outcome.error, []

    def _specs(self, scored: Sequence[Scores]) -> list[Objective] | None:
        """The mean normalized calibration score as partial scores estimate it; None where it cannot be raced:
        nothing scored, no positive reference, or a reported metric without per-item values in a chunk."""
        reference = self.normalizer.reference["calibration"]
        usable = [j for j, ref in enumerate(reference) if math.isfinite(ref) and ref > 0]
        if not scored or not usable:
            return None
        specs = []
        for j, o in enumerate(self.cfg.objectives):
            metrics = [score_of(o, s, "calibration") for s in scored]
            metric = metric_name(o, metrics[0])
            if any(score.key(metric, o.filter) not in score.per_item for score in metrics):
                return None
            specs.append(Objective(pool_of(metric), 1.0 if self.normalizer.higher[j] else -1.0,
                                   1 / len(usable) if j in usable else 0.0, reference[j] if j in usable else 1.0))
        return specs

    def _below(self, m: _Member, best: _Member, specs: Sequence[Objective]) -> bool:
        """Whether the member is confidently below the family's best so far, on the items it has scored."""
        d = paired_difference(specs, self._items(m), self._items(best))
        return d.n >= MIN_PAIRED_ITEMS and d.below(self.cfg.scoring.racing_z)

    def _items(self, m: _Member) -> list[tuple[float, ...]]:
        """Per objective, the member's reported-metric values on the items scored, in chunk order."""
        scores = self.chunks.in_chunk_order(m.full) if m.full is not None else combine(m.parts)
        out = []
        for o in self.cfg.objectives:
            score = score_of(o, scores, "calibration")
            out.append(score.per_item[score.key(metric_name(o, score), o.filter)])
        return out

    def _best(self, state: Sequence[_Member]) -> _Member | None:
        """The family's best member scored in full so far (ties: the first), as the grid's choice ranks them."""
        return max((m for m in state if m.full is not None), key=lambda m: self._rank(m.full), default=None)

    def _log(self, m: _Member) -> None:
        """Append what this export scored of a member: its scores on every item, its failure, or its chunks."""
        if not m.new:
            return
        m.new = False
        partial = m.full is None and m.error is None
        self.run.append(BaselineRecord(
            m.fixed.name, "calibration", recipe_data(m.recipe), combine(m.parts) if partial else m.full,
            m.error, chunks=len(m.parts) if partial else None,
            items=self.chunks.n_items(len(m.parts)) if partial else None, tokens=m.tokens))
