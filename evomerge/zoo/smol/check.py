"""The family's quality and the conditions it must meet to show what a merge search can do.

Everything is scored by the family checks of ``evomerge.zoo.check`` (the pipeline a run's report
uses: recipes merged and scored by the execution Worker with lm-eval, normalized by the best expert
per skill): (a) from the base and each expert alone on held-out, scored first so that a build whose
experts lack their skill stops before the costly part; (b) from the fixed recipes of the reports'
grid, each family's member chosen on calibration; (c) from the ceiling search (``zoo.ceiling``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from evomerge.recipes.fixed import DENSITIES, LAMBDAS, source_name
from evomerge.zoo.ceiling import search_ceiling
from evomerge.zoo.check import EPS, FamilyScorer, ModelFamily, Table, best_fixed, check_fixed

# (a) every expert has its skill, the base lacks each by a margin; (b) no fixed recipe is nearly as
# good as the experts; (c) per-layer weights chosen on held-out reach well beyond the best fixed one.
OWN_MIN = 0.90
BASE_GAP = 0.40
FIXED_MAX = 0.85
ROOM = 0.10
CONDITIONS = {
    "a": f"a: each expert >= {OWN_MIN:.2f} on its skill, the base >= {BASE_GAP:.2f} below it",
    "b": f"b: the best fixed recipe keeps <= {FIXED_MAX:.2f} mean normalized on held-out",
    "c": f"c: a per-layer search on held-out (the ceiling) reaches >= best fixed + {ROOM:.2f}",
}
Verdicts = dict[str, dict[str, Any]]  # condition -> {"holds": bool, "evidence": str}, as the manifest records them


@dataclass(frozen=True)
class CheckPlan:
    """How hard a build checks (b) and (c): the fixed grids, and the ceiling's budget and layer groups."""

    lambdas: tuple[float, ...] = LAMBDAS
    densities: tuple[float, ...] = DENSITIES
    ceiling_evaluations: int = 60
    ceiling_granularity: int = 5  # layers per group: 8 groups × 3 experts = 24 weights for CMA-ES


def table_rows(family: ModelFamily) -> dict[str, str]:
    """The held-out table's rows ("base", each skill's expert) -> the fixed recipe each row scores."""
    return {"base": "base", **{s: source_name(i) for i, s in enumerate(family.skills)}}


def heldout_table(family: ModelFamily) -> Table:
    """model ("base", each skill's expert) -> skill -> held-out acc."""
    scorer = FamilyScorer(family)
    singles = family.recipes(lambdas=(1.0,), densities=(0.5,))
    return {row: dict(zip(family.skills, scorer.fixed(singles[name][0], "heldout"), strict=True))
            for row, name in table_rows(family).items()}


def condition_a(table: Table) -> tuple[bool, str]:
    """(holds, evidence) of (a) on ``heldout_table``'s rows."""
    base = table["base"]
    skills = list(base)
    holds = all(table[s][s] >= OWN_MIN - EPS and table[s][s] - base[s] >= BASE_GAP - EPS for s in skills)
    return holds, ", ".join(f"{s}: expert {table[s][s]:.3f}, base {base[s]:.3f}" for s in skills)


def room(family: ModelFamily, plan: CheckPlan, table: Table, log: Callable[[str], None] = lambda line: None
         ) -> dict[str, Any]:
    """The fixed recipes (``check_fixed``'s record; the base and experts' held-out scores read from ``table``,
    ``heldout_table``'s) and, from the best task-arithmetic λ, the ceiling."""
    known = {name: tuple(table[row][s] for s in family.skills) for row, name in table_rows(family).items()}
    q = check_fixed(family, lambdas=plan.lambdas, densities=plan.densities, known=known)
    log("fixed (mean normalized held-out): "
        + ", ".join(f"{f['name']} {f['heldout']:.3f}" for f in q["fixed"].values()))
    start = q["fixed"]["task_arithmetic"]["params"]["lam"]
    q["ceiling"] = search_ceiling(family, start, plan.ceiling_evaluations, family.seed,
                                  layer_granularity=plan.ceiling_granularity, log=log)
    return q


def verdicts(table: Table, q: Mapping[str, Any] | None, unchecked: str = "not checked") -> Verdicts:
    """(a) on the held-out table; (b) and (c) on ``room``'s record, or (None) not judged, ``unchecked`` saying why."""
    holds, evidence = condition_a(table)
    out: Verdicts = {CONDITIONS["a"]: {"holds": holds, "evidence": evidence}}
    if q is None:
        out |= {CONDITIONS[c]: {"holds": None, "evidence": unchecked} for c in "bc"}
    else:
        family, best = best_fixed(q)
        fixed = ", ".join(f"{f['name']} {f['heldout']:.3f}" for f in q["fixed"].values())
        out[CONDITIONS["b"]] = {"holds": best <= FIXED_MAX + EPS,
                                "evidence": f"best {q['fixed'][family]['name']} {best:.3f} (held-out; {fixed})"}
        ceiling = q["ceiling"]["heldout"]
        out[CONDITIONS["c"]] = {"holds": ceiling - best >= ROOM - EPS,
                                "evidence": f"ceiling {ceiling:.3f} vs best fixed {best:.3f} ({ceiling - best:+.3f})"}
    return out
