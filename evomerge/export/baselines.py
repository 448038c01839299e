"""The fixed recipes every report shows beside the search (docs/DESIGN.md, "Baselines"), scored in the same run.

The families are ``evomerge.recipes.fixed``'s: the base, each source alone, the uniform soup, and task
arithmetic, TIES and DARE-TIES over their grids. Each member is an ordinary Recipe over the run's
base and sources, evaluated by the run's own worker on the same tasks as the candidates, and cached
in the run log as a ``BaselineRecord`` — a later export or report reuses the record whose name, split
and recipe all match, and never scores it again. A member the search started from (a seed point that
merges exactly as the member does) takes that candidate's calibration scores from the log instead. A grid family's members are scored on calibration;
the one with the best mean normalized calibration score (ties: the first) is scored on held-out and
shown in tables — chosen without looking at held-out data. The greedy soup (``greedy_soup``) is chosen on
calibration too and scored on held-out like a grid's choice.

"Base alone" and "source alone" go through the same merge path as every candidate rather than
being loaded from their folders: the arithmetic is exact, so the scores are those of the folders,
and one code path scores everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from evomerge.config.search import SearchConfig
from evomerge.execution.worker import Outcome
from evomerge.genome.space import GenomeSpace
from evomerge.recipes import Recipe, recipe_data
from evomerge.recipes.fixed import GRID_FAMILIES, FixedRecipe, fixed_recipes, merges, soup_of, source_name
from evomerge.run.log import RunLog
from evomerge.run.records import BaselineRecord, CandidateRecord
from evomerge.scoring.normalize import Normalizer
from evomerge.scoring.objectives import raw_values

Evaluate = Callable[[Recipe, str, str], Outcome]  # (recipe, split, what) -> outcome
Raw = tuple[float, ...] | None  # raw values per objective; None: failed


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

    def best_fixed(self, split: str) -> BaselineScores:
        """The row with the best mean normalized score on ``split`` among the merges (not the base or a source alone)."""
        return self.normalizer.best([(r, getattr(r, split)) for r in self.rows if merges(r.fixed.family)], split)


def recipe_of(cfg: SearchConfig, fixed: FixedRecipe) -> Recipe:
    return fixed.recipe(cfg.sources.base, cfg.sources.models, layer_granularity=cfg.genome.layer_granularity,
                        dtype=cfg.genome.dtype, seed=cfg.seed)


def cached_or_scored(run: RunLog, fixed: FixedRecipe, split: str, evaluate: Evaluate) -> BaselineRecord:
    """The log's record of this baseline on this split, the search's own scores where it started from this
    recipe (on calibration), or a fresh evaluation appended to the log."""
    recipe = recipe_of(run.config(), fixed)
    want = recipe_data(recipe)
    for r in run.baselines():
        if r.name == fixed.name and r.split == split and r.recipe == want:
            return r
    start = scored_start(run, recipe) if split == "calibration" else None
    if start is not None:
        return BaselineRecord(fixed.name, split, want, start.scores, start.error)  # type: ignore[arg-type]
    outcome = evaluate(recipe, split, f"baseline {fixed.label}")
    record = run.append(BaselineRecord(fixed.name, split, want, outcome.scores, outcome.error))  # type: ignore[arg-type]
    assert isinstance(record, BaselineRecord)
    return record


def scored_start(run: RunLog, recipe: Recipe) -> CandidateRecord | None:
    """The search's start point (scored on every calibration item) that merges exactly as ``recipe``, if any."""
    space = GenomeSpace.for_config(run.config())
    for r in run.candidates():
        if r.operator == "init" and r.cached_from is None and r.items is None and space.to_recipe(r.x).same_merge(recipe):
            return r
    return None


def evaluate_baselines(run: RunLog, evaluate: Evaluate, higher: Sequence[bool]) -> Baselines:
    """Score (or read back) every baseline on calibration, choose each grid's best, score the table on held-out."""
    cfg = run.config()
    labels = cfg.sources.labels()
    families = fixed_recipes(len(cfg.sources.models), tuple(labels[m] for m in cfg.sources.models))

    def calibration(fixed: FixedRecipe) -> BaselineRecord:
        return cached_or_scored(run, fixed, "calibration", evaluate)

    def both(fixed: FixedRecipe) -> BaselineScores:
        cal, held = calibration(fixed), cached_or_scored(run, fixed, "heldout", evaluate)
        return BaselineScores(fixed, raw_values(cfg.objectives, cal.scores, "calibration"),
                              raw_values(cfg.objectives, held.scores, "heldout"), cal.error or held.error)

    singles = [both(members[0]) for family, members in families.items() if family not in GRID_FAMILIES]
    normalizer = Normalizer.from_sources(higher, {
        split: [getattr(r, split) for r in singles if r.fixed.family.startswith("source")] for split in ("calibration", "heldout")
    })
    grids = {family: tuple((m, raw_values(cfg.objectives, calibration(m).scores, "calibration")) for m in families[family])
             for family in GRID_FAMILIES}
    chosen = [normalizer.best(grid, "calibration") for grid in grids.values()]

    def rank(fixed: FixedRecipe) -> tuple[float, float]:
        return normalizer.rank(raw_values(cfg.objectives, calibration(fixed).scores, "calibration"), "calibration")

    k, names = len(cfg.sources.models), tuple(labels[m] for m in cfg.sources.models)
    order = sorted(range(k), key=lambda i: rank(families[source_name(i)][0]), reverse=True)  # ties: source order
    greedy = greedy_soup(order, lambda members: soup_of(members, k, names), rank)
    return Baselines((*singles, *(both(m) for m in chosen), both(greedy)), grids, normalizer)


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
