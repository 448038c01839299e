"""The report of a run: plots (PNG) and ``summary.md``, all derived from the run log.

- ``fitness.png``: best and mean scalarized fitness per generation (the weighted mean of the
  oriented objectives, as the strategies scalarize), and the best so far;
- ``objectives.png``: best and mean of each objective per generation (raw metric values);
- ``front.png``: calibration scores of every successful candidate, the Pareto front, the baselines
  and the exported (or best) candidate — the first two objectives, or a grid of every pair;
- ``summary.md``: run facts, the exported/best candidate beside the baselines on held-out data
  (raw and normalized) and its gain over the best fixed recipe, the finalists, the fixed-recipe grids.

Generations are the candidate records' ``generation`` (what a steady-state strategy reports there
is its own notion of generation). Finalists and baselines are scored, and cached in the log, when
the log does not have them yet.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from evomerge.config.sizes import format_size
from evomerge.export.card import code, comparison_table, fmt, gain_line, md, reference_line
from evomerge.export.evaluator import Evaluator, ExecutorFactory
from evomerge.export.finalists import DEFAULT_FINALISTS, Analysis, analyze, successful
from evomerge.files import write_text_atomic
from evomerge.materialize.statistics import DESCRIPTIONS, statistics_cost
from evomerge.run.log import RunLog
from evomerge.run.racing import scored_items, scoring_summary
from evomerge.run.records import BaselineRecord, CandidateRecord, CompletedRecord, ExportRecord, HeldoutRecord
from evomerge.run.trackers import Trackers
from evomerge.scoring.objectives import fitness as scalarized
from evomerge.sources.writer import check_outside

PLOTS = ("fitness.png", "objectives.png", "front.png")


def write_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    finalists: int | None = None,
    executor_factory: ExecutorFactory | None = None,
    quiet: bool = False,
) -> Path:
    run = RunLog.open(Path(run_dir))
    default = run.root / "report"  # the one place inside a run folder that is an output
    if out is not None and Path(out).resolve() != default.resolve():
        check_outside(Path(out), run.inputs())
    with run.session():
        return _write_report(run, Path(out) if out is not None else default, finalists, executor_factory, quiet)


def _write_report(run: RunLog, out: Path, finalists: int | None, executor_factory: ExecutorFactory | None,
                  quiet: bool) -> Path:
    exports = run.exports()
    if finalists is None:  # as many as the last export re-scored, so the report reuses its scores
        finalists = exports[-1].finalists if exports else DEFAULT_FINALISTS
    with Evaluator(run, executor_factory, quiet=quiet) as evaluator:
        analysis = analyze(run, evaluator, finalists=finalists)
        chosen, label = _chosen(analysis, exports)
    out.mkdir(parents=True, exist_ok=True)
    _plot_fitness(analysis, out / "fitness.png")
    _plot_objectives(analysis, out / "objectives.png")
    _plot_front(analysis, chosen, label, out / "front.png")
    write_text_atomic(out / "summary.md", summary(analysis, chosen, label, exports))
    with Trackers.start(run, quiet=quiet) as trackers:
        trackers.images({f"report/{Path(name).stem}": out / name for name in PLOTS})
    return out


def _weighted_note(analysis: Analysis) -> list[str]:
    """CMA-ES ranks by one weighted score of the objectives (as mergekit-evolve did): say how to see their front."""
    objectives = analysis.cfg.objectives
    if analysis.cfg.strategy.name != "cmaes" or len(objectives) < 2:
        return []
    weights = ", ".join(f"{md(o.task)} {o.weight:g}" for o in objectives)
    return [f"The search (cmaes) ranked candidates by one weighted score of its {len(objectives)} objectives "
            f"({weights}); to search their Pareto front instead, set `strategy.name: nsga2` and start a new run.", ""]


def _chosen(analysis: Analysis, exports: list[ExportRecord]) -> tuple[CandidateRecord, str]:
    """The last exported candidate, or the one 'evomerge export' would pick by default."""
    keys = {r.key for r in analysis.candidates if r.ok}
    if exports and exports[-1].key in keys:
        record = analysis.candidate(exports[-1].index)
        analysis.rescore([record])
        return record, f"exported (candidate {record.index})"
    record = analysis.pick("calibration")
    return record, f"best (candidate {record.index})"


# --- summary ------------------------------------------------------------------------------------


def summary(analysis: Analysis, chosen: CandidateRecord, label: str, exports: Sequence[ExportRecord]) -> str:
    lines = [
        f"# Run report: {md(analysis.cfg.name)}",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M:%S')} from `{analysis.run.root}`.",
        "",
        "## Run",
        "",
        *_run_table(analysis, exports),
        "",
        f"## The {label.split(' (')[0]} candidate beside the baselines (held-out)",
        "",
        *comparison_table(analysis, chosen, f"**{label}**"),
        "",
        gain_line(analysis, chosen, label),
        "",
        reference_line(analysis),
        "",
        *_weighted_note(analysis),
        "## Finalists",
        "",
        f"The {len(analysis.finalists)} front members with the best mean normalized calibration score, re-scored on "
        "held-out tasks.",
        "",
        *_finalists_table(analysis),
        "",
        "## Fixed-recipe grids (calibration)",
        "",
        "Each family's best member on calibration (✓) is the row shown in the tables above; the members are raced (a "
        "member confidently below its family's best stops early), and the best is chosen among those scored in full.",
        "",
        *_grid_table(analysis),
        "",
        "## Plots",
        "",
        "![fitness per generation](fitness.png)",
        "",
        "![objectives per generation](objectives.png)",
        "",
        "![Pareto front](front.png)",
        "",
    ]
    return "\n".join(lines)


def _run_table(analysis: Analysis, exports: Sequence[ExportRecord]) -> list[str]:
    """Strategy, genome, budget, evaluations, times, utilization, front and exports of the run."""
    run, cfg = analysis.run, analysis.cfg
    cands = analysis.candidates
    ok = successful(cands)
    cached = sum(r.cached_from is not None for r in cands)
    failed = len(cands) - len(ok)
    evaluated = [r for r in cands if r.cached_from is None]
    merge_s = sum(r.merge_s for r in evaluated)
    score_s = sum(r.score_s for r in evaluated)
    created = run.meta.created
    last = max((r.time or 0.0 for r in cands), default=None)
    elapsed = (f"{_duration(last - created)} (run created → last candidate, pauses included)" if created and last
               else "–")
    sessions = run.sessions()
    util = "; ".join(
        f"session {i}: {s.workers} worker(s) on {s.backend}, {s.told} told, "
        + ", ".join(f"{w} {u:.0%}" for w, u in s.utilization.items())
        for i, s in enumerate(sessions)
    ) or "–"
    options = ", ".join(f"{k}={v}" for k, v in cfg.strategy.options.items())
    return [
        "| | |",
        "|---|---|",
        f"| strategy | {cfg.strategy.name}{f' ({options})' if options else ''}, seed {cfg.seed} |",
        f"| genome | methods {', '.join(cfg.genome.methods)}; {len(cfg.sources.models)} sources; layer granularity "
        f"{cfg.genome.layer_granularity}{'; split by kind' if cfg.genome.split_by_kind else ''} |",
        f"| budget | {run.max_evals()} "
        f"candidates{f', {cfg.budget.max_minutes:g} min' if cfg.budget.max_minutes else ''} |",
        f"| evaluations | {len(cands)} candidates told: {len(evaluated)} evaluated, {cached} cache hits, {failed} "
        "failed |",
        f"| generations | {len({r.generation for r in cands})} |",
        f"| wall time | {elapsed} |",
        f"| worker time | {_duration(merge_s + score_s)} (merge {_duration(merge_s)}, scoring {_duration(score_s)}) |",
        f"| scoring | {scoring_summary(cfg.scoring, cands) or '–'} |",
        f"| baselines and finalists | {_export_cost(analysis)} |",
        f"| statistics | {_statistics_cost(analysis.run)} |",
        f"| utilization | {util} |",
        f"| Pareto front | {len(analysis.front)} candidates (calibration objectives) |",
        f"| exports | {_exports(exports)} |",
    ]


def export_cost(records: Sequence[Any]) -> tuple[int, int | None]:
    """(items, tokens) that scoring baselines and finalists cost, from these log records (tokens None where a
    record predates their counting)."""
    scored = [r for r in records if isinstance(r, (BaselineRecord, HeldoutRecord, CompletedRecord))]
    items = sum(r.items if isinstance(r, BaselineRecord) and r.items is not None else scored_items(r.scores)
                for r in scored)
    known = all(r.tokens is not None for r in scored)
    return items, sum(r.tokens or 0 for r in scored) if known else None


def _export_cost(analysis: Analysis) -> str:
    """What scoring the baselines and finalists cost, and how many grid members racing stopped early."""
    items, tokens = export_cost(analysis.run.records)
    grid = sum(len(g) for g in analysis.baselines.grids.values())
    return (f"{items:,} items" + (f", {tokens:,} tokens" if tokens is not None else "")
            + f" scored (both splits); {len(analysis.baselines.stopped)} of {grid} grid members stopped early by "
            "racing")


def _statistics_cost(run: RunLog) -> str:
    """What the calibration statistics of the baselines that need them (RegMean's, Fisher merging's) cost: each kind
    computed once per source."""
    parts = []
    for kind, description in DESCRIPTIONS.items():
        cost = statistics_cost(run.statistics_dir, kind)
        if cost is not None:
            parts.append(f"{description} of {cost.sources} source(s): computed once in {_duration(cost.seconds)}, "
                         f"{format_size(cost.bytes)}")
    return "; ".join(parts) + " in `statistics/`" if parts else "–"


def _grid_table(analysis: Analysis) -> list[str]:
    """Every member of the grid families with its mean normalized calibration score; the chosen one marked, a member
    racing stopped early shown as the estimate it is."""
    chosen, stopped = {r.name for r in analysis.baselines.rows}, analysis.baselines.stopped
    lines = ["| fixed recipe | mean norm. (calibration) |", "|---|---|"]
    for grid in analysis.baselines.grids.values():
        lines += [f"| {fixed.label}{' ✓' if fixed.name in chosen else ''} | "
                  f"{fmt(analysis.normalizer.mean(raw, 'calibration'), 2)}"
                  + (f" (estimate: stopped after {stopped[fixed.name]} items)" if fixed.name in stopped else "") + " |"
                  for fixed, raw in grid]
    return lines


def _exports(exports: Sequence[ExportRecord]) -> str:
    return ", ".join(f"candidate {e.index} → {code(str(e.out))}" for e in exports) or "none yet"


def _finalists_table(analysis: Analysis) -> list[str]:
    objectives = analysis.cfg.objectives
    norm = analysis.normalizer
    tasks = [md(o.task_for("heldout")) for o in objectives]
    head = ["candidate", "generation", *tasks, "mean norm. (held-out)", "mean norm. (calibration)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in analysis.finalists:
        held = analysis.heldout_raw(r)
        cells = [fmt(held[j]) if held else "failed" for j in range(len(objectives))]
        lines.append("| " + " | ".join([str(r.index), str(r.generation), *cells, fmt(norm.mean(held, "heldout"), 2),
                                        fmt(norm.mean(analysis.calibration_raw(r), "calibration"), 2)]) + " |")
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"




# --- plots --------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def _by_generation(records: Sequence[CandidateRecord]) -> dict[int, list[CandidateRecord]]:
    groups: dict[int, list[CandidateRecord]] = defaultdict(list)
    for r in records:
        groups[r.generation].append(r)
    return dict(sorted(groups.items()))


def _plot_fitness(analysis: Analysis, path: Path) -> None:
    gens = _by_generation(successful(analysis.candidates))
    xs = list(gens)
    fitness = {g: [scalarized(analysis.cfg.objectives, r.objectives) for r in rs] for g, rs in gens.items()}
    best = [max(fitness[g]) for g in xs]
    mean = [sum(fitness[g]) / len(fitness[g]) for g in xs]
    so_far = [max(best[: i + 1]) for i in range(len(best))]
    fig = _figure(6.4, 4.0)
    ax = fig.add_subplot()
    ax.plot(xs, best, "o-", label="best of generation", color="C0", markersize=3)
    ax.plot(xs, mean, "s-", label="mean of generation", color="C1", markersize=3)
    ax.plot(xs, so_far, "--", label="best so far", color="C2")
    ax.set_xlabel("generation")
    ax.set_ylabel("scalarized fitness (weighted mean of objectives)")
    ax.set_title(f"{analysis.cfg.name}: fitness per generation ({analysis.cfg.strategy.name})")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def _plot_objectives(analysis: Analysis, path: Path) -> None:
    objectives = analysis.cfg.objectives
    higher = analysis.normalizer.higher
    gens = _by_generation(successful(analysis.candidates))
    xs = list(gens)
    n = len(objectives)
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig = _figure(4.2 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for j, o in enumerate(objectives):
        ax = axes[j]
        values = {g: [analysis.calibration_raw(r)[j] for r in rs] for g, rs in gens.items()}  # type: ignore[index]
        pick = max if higher[j] else min
        ax.plot(xs, [pick(values[g]) for g in xs], "o-", markersize=3, label="best")
        ax.plot(xs, [sum(values[g]) / len(values[g]) for g in xs], "s-", markersize=3, label="mean")
        ref = analysis.normalizer.reference["calibration"][j]
        if math.isfinite(ref):
            ax.axhline(ref, color="gray", linestyle=":", label="best source alone")
        ax.set_title(f"{o.task} ({'↑' if higher[j] else '↓'})", fontsize=10)
        ax.set_xlabel("generation")
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(f"{analysis.cfg.name}: calibration score per generation")
    _save(fig, path)


def _plot_front(analysis: Analysis, chosen: CandidateRecord, label: str, path: Path) -> None:
    objectives = analysis.cfg.objectives
    n = len(objectives)
    pairs = [(0, 1)] if n == 2 else [(i, j) for i in range(n) for j in range(i + 1, n)]
    if n == 1:
        pairs = [(0, 0)]
    cols = min(len(pairs), 3)
    rows = math.ceil(len(pairs) / cols)
    fig = _figure(4.3 * cols + 2.4, 4.0 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    points = [analysis.calibration_raw(r) for r in successful(analysis.candidates)]
    front = [analysis.calibration_raw(r) for r in analysis.front]
    chosen_raw = analysis.calibration_raw(chosen)
    markers = "v^<>dPXhp8*"
    for ax, (a, b) in zip(axes, pairs, strict=False):
        ax.scatter([p[a] for p in points], [p[b] for p in points], s=10, color="lightgray", label="candidates")  # type: ignore[index]
        ax.scatter([p[a] for p in front], [p[b] for p in front], s=22, color="C0", label="Pareto front", zorder=3)  # type: ignore[index]
        for k, row in enumerate(analysis.baselines.rows):
            if row.calibration is not None:
                ax.scatter([row.calibration[a]], [row.calibration[b]], marker=markers[k % len(markers)], s=45,
                           color=f"C{(k % 8) + 1}", edgecolor="black", linewidth=0.5, label=row.label, zorder=4)
        if chosen_raw is not None:
            ax.scatter([chosen_raw[a]], [chosen_raw[b]], marker="*", s=220, color="red", edgecolor="black",
                       linewidth=0.6, label=label, zorder=5)
        ax.set_xlabel(objectives[a].task)
        ax.set_ylabel(objectives[b].task)
        ax.grid(alpha=0.3)
    for ax in axes[len(pairs):]:
        ax.set_visible(False)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(f"{analysis.cfg.name}: calibration scores, front and baselines")
    _save(fig, path)
