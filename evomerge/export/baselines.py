"""The fixed recipes every report shows beside the search (docs/DESIGN.md, "Baselines"), scored in the same run.

Each baseline is an ordinary Recipe over the run's base and sources, evaluated by the run's own
worker on the same calibration and held-out tasks as the candidates, and cached in the run log as a
``BaselineRecord`` — a later export or report reuses the record whose name, split and recipe all
match, and never scores it again.

| name                  | recipe                                                                  |
|-----------------------|-------------------------------------------------------------------------|
| ``base``              | task_arithmetic, every weight 0: θ = θ0 exactly                         |
| ``source<k>``         | linear, weight 1 for source k and 0 for the others: θ = θ_k exactly     |
| ``soup``              | linear, equal weights: the mean of the sources                          |
| ``task_arithmetic@λ`` | task_arithmetic, weights 1, global λ from LAMBDA_GRID                   |
| ``ties``              | ties, weights 1, density 0.5, λ 1                                       |
| ``dare_ties``         | dare_ties, weights 1, density 0.5, λ 1, the run's seed                  |

"Base alone" and "source alone" go through the same merge path as every candidate rather than
being loaded from their folders: the arithmetic above is exact, so the scores are those of the
folders, and one code path scores everything. For task arithmetic every λ of the grid is scored
on calibration; the λ with the best mean normalized calibration score is the one scored on
held-out and shown in tables (it is chosen without looking at held-out data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from evomerge.config.search import SearchConfig
from evomerge.execution.worker import Outcome
from evomerge.export.scores import Normalizer
from evomerge.recipes import GroupSpec, Recipe, recipe_data
from evomerge.run.log import RunLog
from evomerge.run.records import BaselineRecord
from evomerge.scoring.objectives import raw_values

LAMBDA_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
DENSITY = 0.5  # the usual default of TIES / DARE papers and mergekit examples

Evaluate = Callable[[Recipe, str, str], Outcome]  # (recipe, split, what) -> outcome


@dataclass(frozen=True)
class Baseline:
    name: str  # key in the log
    label: str  # for tables and plots
    recipe: Recipe


@dataclass(frozen=True)
class BaselineScores:
    baseline: Baseline
    calibration: tuple[float, ...] | None  # raw values per objective; None: failed
    heldout: tuple[float, ...] | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.baseline.name

    @property
    def label(self) -> str:
        return self.baseline.label


@dataclass(frozen=True)
class Baselines:
    rows: tuple[BaselineScores, ...]  # table order: base, sources, soup, task arithmetic (chosen λ), ties, dare_ties
    grid: tuple[tuple[float, tuple[float, ...] | None], ...]  # task arithmetic: (λ, calibration raw values)
    lam: float  # the chosen λ
    normalizer: Normalizer  # best single source per objective and split


def _recipe(cfg: SearchConfig, method: str, source_params: dict[str, Sequence[float]], params: dict[str, Any]) -> Recipe:
    spec = GroupSpec(method, {k: tuple(float(v) for v in vals) for k, vals in source_params.items()}, params)
    return Recipe(base=cfg.sources.base, sources=cfg.sources.models, default=spec,
                  layer_granularity=cfg.genome.layer_granularity, dtype=cfg.genome.dtype, seed=cfg.seed)


def source_baselines(cfg: SearchConfig) -> list[Baseline]:
    k = len(cfg.sources.models)
    out = [Baseline("base", "base", _recipe(cfg, "task_arithmetic", {"weight": [0.0] * k}, {"lam": 1.0}))]
    for i, path in enumerate(cfg.sources.models):
        onehot = [1.0 if j == i else 0.0 for j in range(k)]
        out.append(Baseline(f"source{i}", f"{path.name} alone", _recipe(cfg, "linear", {"weight": onehot}, {})))
    return out


def task_arithmetic(cfg: SearchConfig, lam: float) -> Baseline:
    k = len(cfg.sources.models)
    return Baseline(f"task_arithmetic@{lam:g}", f"task arithmetic (λ={lam:g})", _recipe(cfg, "task_arithmetic", {"weight": [1.0] * k}, {"lam": lam}))


def fixed_baselines(cfg: SearchConfig) -> tuple[Baseline, list[Baseline]]:
    """The uniform soup, and the sparsifying methods at their usual defaults."""
    k = len(cfg.sources.models)
    soup = Baseline("soup", "uniform soup", _recipe(cfg, "linear", {"weight": [1.0 / k] * k}, {}))
    sparse = [
        Baseline("ties", f"TIES (d={DENSITY:g})", _recipe(cfg, "ties", {"weight": [1.0] * k, "density": [DENSITY] * k}, {"lam": 1.0})),
        Baseline("dare_ties", f"DARE-TIES (d={DENSITY:g})", _recipe(cfg, "dare_ties", {"weight": [1.0] * k, "density": [DENSITY] * k}, {"lam": 1.0})),
    ]
    return soup, sparse


def cached_or_scored(run: RunLog, baseline: Baseline, split: str, evaluate: Evaluate) -> BaselineRecord:
    """The log's record of this baseline on this split, or a fresh evaluation appended to the log."""
    want = recipe_data(baseline.recipe)
    for r in run.baselines():
        if r.name == baseline.name and r.split == split and r.recipe == want:
            return r
    outcome = evaluate(baseline.recipe, split, f"baseline {baseline.label}")
    record = run.append(BaselineRecord(baseline.name, split, want, outcome.scores, outcome.error))  # type: ignore[arg-type]
    assert isinstance(record, BaselineRecord)
    return record


def evaluate_baselines(run: RunLog, evaluate: Evaluate, higher: Sequence[bool], grid: Sequence[float] = LAMBDA_GRID) -> Baselines:
    """Score (or read back) every baseline on calibration, choose λ, score the table on held-out."""
    cfg = run.config()
    objectives = cfg.objectives
    sources = source_baselines(cfg)
    soup, sparse = fixed_baselines(cfg)
    grid_bl = [task_arithmetic(cfg, lam) for lam in grid]

    def both(b: Baseline) -> BaselineScores:
        cal = cached_or_scored(run, b, "calibration", evaluate)
        held = cached_or_scored(run, b, "heldout", evaluate)
        return BaselineScores(b, raw_values(objectives, cal.scores, "calibration"), raw_values(objectives, held.scores, "heldout"),
                              cal.error or held.error)

    source_rows = [both(b) for b in sources]
    normalizer = Normalizer.from_sources(higher, {
        "calibration": [r.calibration for r in source_rows[1:]],
        "heldout": [r.heldout for r in source_rows[1:]],
    })
    grid_raw = [raw_values(objectives, cached_or_scored(run, b, "calibration", evaluate).scores, "calibration") for b in grid_bl]
    best = max(range(len(grid_bl)), key=lambda i: (normalizer.rank(grid_raw[i], "calibration"), -i))
    rows = [*source_rows, both(soup), both(grid_bl[best]), *(both(b) for b in sparse)]
    return Baselines(tuple(rows), tuple(zip(grid, grid_raw)), float(grid[best]), normalizer)
