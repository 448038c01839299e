"""A run's state, derived from its log: progress, best per objective, front size, failures, utilization, memory plan."""

from __future__ import annotations

from evomerge import pareto
from evomerge.run.log import RunLog
from evomerge.run.racing import scoring_summary


def summarize(run: RunLog) -> list[str]:
    cfg = run.config()
    cands = run.candidates()
    ok = [r for r in cands if r.ok]
    lines = [
        f"run        {run.root}  ({cfg.name}, strategy {cfg.strategy.name}, seed {cfg.seed})",
        f"progress   {len(cands)} / {run.max_evals()} candidates"
        f"  ({sum(r.cached_from is not None for r in cands)} cached, {len(cands) - len(ok)} failed)",
    ]
    for j, o in enumerate(cfg.objectives):
        if ok:
            best = max(ok, key=lambda r: r.objectives[j])
            lines.append(f"objective  {o.task}: best {best.objectives[j]:.4f} (candidate {best.index})")
    lines.append(f"front      {len(pareto.front(run.evaluated(), lambda r: r.objectives))} non-dominated candidates")
    scored = scoring_summary(cfg.scoring, cands)
    if scored is not None:
        lines.append(f"scoring    {scored}")
    sessions = run.sessions()
    if sessions:
        last = sessions[-1]
        shown = ", ".join(f"{w} {u:.0%}" for w, u in last.utilization.items())
        lines.append(f"workers    last session: {last.workers} on {last.backend}; utilization {shown}"
                     + (f"; {last.restarts} worker restarts" if last.restarts else ""))
        if last.stopped:
            lines.append(f"stopped    {last.stopped}")
    plans = run.plans()
    if plans:
        lines.extend(plans[-1].plan.lines())
    return lines
