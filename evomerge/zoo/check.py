"""A family's checks on evomerge's own pipeline: the fixed recipes the reports show, and the conditions.

Any family — the tiny zoo, the SmolLM2 family — is described by plain data (:class:`ModelFamily`: base and
expert folders, each skill's calibration and held-out lm-eval tasks, the scoring options). Every model
is then made and scored exactly as a run's report makes and scores its baselines: the members of
``recipes.fixed`` (base, each expert alone, the soup, task arithmetic over λ, TIES and DARE-TIES over
density × λ) merged and scored by the execution ``Worker`` (the merge plan, lm-eval through
``scoring.Scorer``), normalized by the best expert per skill (``scoring.normalize.Normalizer``), each
grid family represented by its best member on calibration (``Normalizer.best``, as export/baselines.py
chooses). Rows and families carry the reports' names: ``base``, ``source0``, ``soup``,
``task_arithmetic@0.2``, ``ties@d0.3,l0.4``.

Why lm-eval and not a scorer of the zoo's own: it is the faster of the two here. On the built seed-0 zoo
(one thread, this 2-core machine at load 6-8), the whole check of the zoo build (the base, four experts and
106 fixed merges on 256 calibration items per skill, the table's rows on 512 held-out) took 98 and 108 s
this way against 150 and 161 s with the exact-match scorer over token tensors it replaces, run back to back,
with the same members chosen and the same scores; one model's 1024 calibration items take 0.20-0.26 s
with ``scoring.Scorer`` (``FastHFLM``'s batched, prefix-sharing forwards) against 0.34-0.38 s.

The conditions a family must meet for a search to show anything (the tiny zoo's, docs/ZOO.md):
(a) distinct experts over a base that lacks their skills, (b) no fixed recipe nearly as good as the
experts, (c) per-layer weights can be (``zoo.ceiling``).
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

from evomerge.config.search import ObjectiveConfig, ScoringConfig
from evomerge.errors import EvomergeError
from evomerge.execution.worker import Worker, WorkerSpec
from evomerge.recipes.fixed import (
    DENSITIES,
    GRID_FAMILIES,
    LAMBDAS,
    MERGE_FAMILIES,
    FixedRecipe,
    fixed_recipes,
    source_name,
)
from evomerge.recipes.recipe import Recipe
from evomerge.scoring.normalize import Normalizer, rank_key
from evomerge.scoring.objectives import directions, raw_values

OWN_MIN = 0.95
BASE_GAP = 0.40
FIXED_MAX = 0.85
ROOM = 0.12
EPS = 1e-9  # the bounds are inclusive: 0.95 - 0.40 must not fail on float rounding
CONDITIONS = {
    "a": "a: each expert >= 0.95 on its skill, the base >= 0.40 below it",
    "b": "b: the best fixed recipe keeps <= 0.85 mean normalized on held-out",
    "c": "c: a per-layer search on held-out (the ceiling) reaches >= best fixed + 0.12",
}
SPLITS = ("calibration", "heldout")

Table = dict[str, dict[str, float]]  # row (a fixed recipe's name) -> skill -> score
Values = tuple[float, ...]  # one raw score per skill, in the family's skill order
Raw = Values | None  # None: the evaluation failed


@dataclass(frozen=True)
class ModelFamily:
    """A family to check, as plain data (it travels to worker processes).

    ``experts`` and ``objectives`` name the same skills in the same order; the i-th expert is the
    reports' ``source<i>``. ``seed`` fixes DARE's draws as a search with that seed draws them; ``items``
    scores only the first that many documents of each task (None: all).
    """

    base: Path
    experts: Mapping[str, Path]  # skill -> expert folder
    objectives: Mapping[str, ObjectiveConfig]  # skill -> its calibration and held-out tasks and metric
    scoring: ScoringConfig = ScoringConfig()  # task folder, batch size, prompt options
    seed: int = 0
    items: int | None = None
    threads: int = 1  # torch threads per worker: fixed, because reductions split over threads round differently

    def __post_init__(self) -> None:
        if list(self.experts) != list(self.objectives):
            raise EvomergeError(f"a family's experts ({', '.join(self.experts)}) and objectives "
                                f"({', '.join(self.objectives)}) must name the same skills in the same order")

    @property
    def skills(self) -> tuple[str, ...]:
        return tuple(self.experts)

    @property
    def sources(self) -> tuple[Path, ...]:
        return tuple(self.experts.values())

    def recipes(self, lambdas: Sequence[float] = LAMBDAS,
                densities: Sequence[float] = DENSITIES) -> dict[str, list[FixedRecipe]]:
        """``recipes.fixed``'s families over these experts (labelled by skill)."""
        return fixed_recipes(len(self.experts), self.skills, lambdas=lambdas, densities=densities)

    def recipe(self, fixed: FixedRecipe) -> Recipe:
        return fixed.recipe(self.base, self.sources, seed=self.seed)

    def worker_spec(self) -> WorkerSpec:
        objectives = list(self.objectives.values())
        return WorkerSpec(base=self.base, sources=self.sources, scoring=self.scoring, threads=self.threads,
                          calibration_tasks=tuple(o.task_for("calibration") for o in objectives),
                          heldout_tasks=tuple(o.task_for("heldout") for o in objectives))


class FamilyScorer:
    """One Worker over a family: a recipe's raw score per skill on a split, as a run's report reads them."""

    def __init__(self, family: ModelFamily) -> None:
        self.family = family
        self.worker = Worker(family.worker_spec())
        self.higher: tuple[bool, ...] | None = None  # per skill, as the tasks declare it (known after a success)

    def raw(self, recipe: Recipe, split: str) -> tuple[Raw, str | None]:
        """One value per skill (``scoring.objectives.raw_values``), or None and the reason it failed."""
        objectives = list(self.family.objectives.values())
        items = None
        if self.family.items is not None:
            docs = self.worker.scorer(split).docs
            items = {task: range(min(self.family.items, len(docs[task])))
                     for task in (o.task_for(split) for o in objectives)}
        outcome = self.worker.evaluate(recipe, split, items)
        if outcome.scores is not None and self.higher is None:
            self.higher = directions(objectives, outcome.scores, split)
        return raw_values(objectives, outcome.scores, split), outcome.error

    def fixed(self, member: FixedRecipe, split: str) -> Values:
        """A fixed recipe's raw scores; its failure is the family's (the models cannot be merged and scored)."""
        raw, error = self.raw(self.family.recipe(member), split)
        if raw is None:
            raise EvomergeError(f"fixed recipe {member.name} failed on {split} ({error}): the family's models cannot "
                                "be merged and scored as a run would; check them with 'evomerge evaluate'")
        return raw


def scores_of(family: ModelFamily, split: str, members: Sequence[FixedRecipe]) -> list[Values]:
    """Raw scores of ``members`` on ``split`` from a Worker of its own: a worker process's share of a grid."""
    scorer = FamilyScorer(family)
    return [scorer.fixed(m, split) for m in members]


def check_fixed(family: ModelFamily, *, lambdas: Sequence[float] = LAMBDAS, densities: Sequence[float] = DENSITIES,
                pool: Executor | None = None, parts: int = 1, known: Mapping[str, Values] | None = None
                ) -> dict[str, Any]:
    """The base, each expert alone, the soup and the grid families, each grid represented by its best member on
    calibration; the table's rows then scored on held-out. With a ``pool``, the calibration grid is scored in
    ``parts`` shares on it. ``known``: held-out raw scores by fixed recipe name that the caller already has (a
    build's table of the base and its experts), reused instead of scored again.

    Returns ``{"table": held-out rows, "calibration_table": calibration rows, "fixed": family -> {"name",
    "label", "params" (the member's global parameters: ``lam``), "calibration", "heldout"}}``: rows are fixed
    recipe names -> skill -> raw score; the ``fixed`` scores are mean normalized (by the best expert per
    skill, on that split).
    """
    families = family.recipes(lambdas, densities)
    members = [m for ms in families.values() for m in ms]
    here = FamilyScorer(family)
    calibration: list[Values]
    if pool is None:
        calibration = [here.fixed(m, "calibration") for m in members]
    else:
        shares = [members[i::parts] for i in range(parts)]  # interleaved: every share gets some of each family
        calibration = [()] * len(members)
        for i, share in enumerate(pool.map(partial(scores_of, family, "calibration"), shares)):
            calibration[i::parts] = share
    raw = dict(zip((m.name for m in members), calibration, strict=True))
    singles = [ms[0] for name, ms in families.items() if name not in GRID_FAMILIES]
    known = known or {}
    heldout = {m.name: known[m.name] if m.name in known else here.fixed(m, "heldout") for m in singles}
    assert here.higher is not None  # set by the successful evaluations above
    sources = [source_name(i) for i in range(len(family.experts))]
    normalizer = Normalizer.from_sources(here.higher, {"calibration": [raw[s] for s in sources],
                                                       "heldout": [heldout[s] for s in sources]})
    chosen = {name: normalizer.best([(m, raw[m.name]) for m in families[name]], "calibration")
              for name in GRID_FAMILIES}
    heldout |= {m.name: here.fixed(m, "heldout") for m in chosen.values()}
    shown = [*singles, *chosen.values()]
    tables = {"calibration": {m.name: raw[m.name] for m in shown}, "heldout": heldout}
    fixed = {m.family: {"name": m.name, "label": m.label, "params": dict(m.params),
                        **{split: round(normalizer.mean(tables[split][m.name], split), 4) for split in SPLITS}}
             for m in shown if m.family in MERGE_FAMILIES}

    def named(rows: Mapping[str, Values]) -> Table:
        return {name: dict(zip(family.skills, values, strict=True)) for name, values in rows.items()}

    return {"table": named(tables["heldout"]), "calibration_table": named(tables["calibration"]), "fixed": fixed}


def own_scores(table: Table) -> dict[str, float]:
    """Each skill's own expert's score (the i-th skill's expert is ``source<i>``)."""
    return {s: table[source_name(i)][s] for i, s in enumerate(table["base"])}


def best_fixed(q: Mapping[str, Any]) -> tuple[str, float]:
    """The fixed recipe family with the best mean normalized held-out score (ties: the first; NaN last), and
    that score: condition (b)'s "best fixed recipe", the bar a per-layer search must clear."""
    family = max(q["fixed"], key=lambda f: rank_key(q["fixed"][f]["heldout"]))
    return family, q["fixed"][family]["heldout"]


def conditions(q: Mapping[str, Any]) -> dict[str, tuple[bool | None, str]]:
    """Name -> (holds, evidence) for (a), (b), (c) on a family's quality record (``check_fixed``'s); (c) is
    None until a ceiling (``q["ceiling"]["heldout"]``) is recorded. A family failing one cannot show search winning."""
    table = q["table"]
    own = own_scores(table)
    base = table["base"]
    family, best = best_fixed(q)
    fixed = ", ".join(f"{f['name']} {f['heldout']:.3f}" for f in q["fixed"].values())
    out: dict[str, tuple[bool | None, str]] = {
        CONDITIONS["a"]: (
            all(own[s] >= OWN_MIN - EPS and own[s] - base[s] >= BASE_GAP - EPS for s in own),
            ", ".join(f"{s}: expert {own[s]:.3f}, base {base[s]:.3f}" for s in own),
        ),
        CONDITIONS["b"]: (best <= FIXED_MAX + EPS, f"best {q['fixed'][family]['name']} {best:.3f} (held-out; {fixed})"),
    }
    if "ceiling" in q:
        ceiling = q["ceiling"]["heldout"]
        room = ceiling - best
        out[CONDITIONS["c"]] = (room >= ROOM - EPS, f"ceiling {ceiling:.3f} vs best fixed {best:.3f} ({room:+.3f})")
    else:
        out[CONDITIONS["c"]] = (None, "not checked yet: run scripts/zoo_ceiling.py on the zoo")
    return out


def require(verdicts: Mapping[str, Mapping[str, Any]], what: str) -> None:
    """Raise EvomergeError naming each condition that failed (``holds`` False; None is not judged yet)."""
    failed = [f"{name} ({v['evidence']})" for name, v in verdicts.items() if v["holds"] is False]
    if failed:
        raise EvomergeError(f"{what} misses condition {'; '.join(failed)}; try another --seed")


def verdict_line(name: str, holds: bool | None, evidence: str) -> str:
    """One condition as the builders and scripts print it: ok, FAIL, or ... (not judged yet)."""
    return f"{'ok  ' if holds else 'FAIL' if holds is False else '... '} {name}: {evidence}"


def format_table(table: Table) -> str:
    skills = list(table["base"])
    width = max(len(row) for row in table) + 2
    lines = ["".ljust(width) + "".join(f"{s:>7}" for s in skills)]
    lines += [row.ljust(width) + "".join(f"{acc[s]:7.3f}" for s in skills) for row, acc in table.items()]
    return "\n".join(lines)
