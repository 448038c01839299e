"""A run's state, derived from its log: progress, best per objective, front size, failures, tracker runs, utilization,
memory plan."""

from __future__ import annotations

from typing import Sequence

from evomerge import pareto
from evomerge.config.search import ObjectiveConfig
from evomerge.run.log import RunLog
from evomerge.run.racing import scoring_summary
from evomerge.run.records import CandidateRecord, TrackerRecord


def generation_stats(objectives: Sequence[ObjectiveConfig],
                     records: Sequence[CandidateRecord]) -> list[tuple[float, float]]:
    """Per objective, the best and mean oriented value of the successful ``records`` (a generation); [] if none."""
    ok = [r for r in records if r.ok]
    if not ok:
        return []
    columns = [[r.objectives[j] for r in ok] for j in range(len(objectives))]
    return [(max(values), sum(values) / len(values)) for values in columns]


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
    trackers = {r.library: r.run_id for r in run.of_type(TrackerRecord)}
    if trackers:
        lines.append("trackers   " + ", ".join(f"{library} run {run_id}" for library, run_id in trackers.items()))
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
