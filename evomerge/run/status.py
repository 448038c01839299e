"""A run's state, derived from its log: progress, best per objective, front size, failures, utilization."""

from __future__ import annotations

from evomerge.export.front import pareto_front
from evomerge.run.log import RunLog


def summarize(run: RunLog) -> list[str]:
    cfg = run.config()
    cands = run.candidates()
    ok = [r for r in cands if r["error"] is None]
    lines = [
        f"run        {run.root}  ({cfg.name}, strategy {cfg.strategy}, seed {cfg.seed})",
        f"progress   {len(cands)} / {run.max_evals()} candidates"
        f"  ({sum(r.get('cached_from') is not None for r in cands)} cached, {len(cands) - len(ok)} failed)",
    ]
    for j, o in enumerate(cfg.objectives):
        if ok:
            best = max(ok, key=lambda r: r["objectives"][j])
            lines.append(f"objective  {o.task}: best {best['objectives'][j]:.4f} (candidate {best['index']})")
    lines.append(f"front      {len(pareto_front(cands))} non-dominated candidates")
    sessions = list(run.of_type("session"))
    if sessions:
        util = sessions[-1]["utilization"]
        shown = ", ".join(f"{w} {u:.0%}" for w, u in util.items())
        lines.append(f"workers    last session: {sessions[-1]['workers']} on {sessions[-1]['backend']}; utilization {shown}")
    return lines
