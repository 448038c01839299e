#!/usr/bin/env python
"""Search quality on the zoo: every strategy at equal evaluation budgets, scored on held-out data.

    .venv/bin/python scripts/bench_search.py [--config configs/zoo.yaml] [--budgets 50 100 200] [--seeds 3]

For each strategy (cmaes, niches, nsga2, optuna TPE, random) and seed, one run of the config with
that strategy and seed goes to the largest budget (in-process worker, one process per run, ``--jobs``
runs at a time). No strategy knows the budget, so the first B candidates of that run *are* the run
with budget B; at each budget the script takes the run as it stood then (``analyze(..., upto=B)``)
and reports two picks, both scored on the held-out tasks:

- **calibration pick**: the front member with the best mean normalized calibration score — chosen
  without looking at held-out data, like the task-arithmetic λ of the baselines (the main number);
- **export pick**: what ``evomerge export`` picks by default — the best of the 5 finalists on
  held-out, so its held-out score is slightly optimistic (it selects on the data it reports).

Baselines (base, each expert, uniform soup, task arithmetic with λ chosen on calibration, TIES and
DARE-TIES at density 0.5) are scored by the same worker in every run; "mean normalized" divides each
skill's held-out accuracy by the best expert's on that skill and averages over skills.

Writes ``docs/bench_search.png`` (calibration best-so-far vs. evaluations, and held-out at each
budget) and its table into docs/BENCHMARKS.md between the ``bench_search`` markers. Run folders go
to ``--work`` (default: a temporary folder, removed at the end); a finished run found there with the
same config is reused (only the analysis runs again).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from benchdoc import REPO, cpu_model, shown, write_section, zoo_config  # noqa: E402 (first: sets the offline environment)

STRATEGIES = {  # label -> (strategy name, options)
    "cmaes": ("cmaes", {}),
    "niches": ("niches", {}),
    "nsga2": ("nsga2", {}),
    "optuna TPE": ("optuna", {"sampler": "tpe"}),
    "random": ("random", {}),
}
BASELINE_ORDER = ("base", "soup", "task_arithmetic", "ties", "dare_ties")


def one_run(label: str, seed: int, config: str, budgets: list[int], work: str) -> dict:
    """Search with one strategy and seed to the largest budget; the picks at every budget, scored."""
    import torch

    from evomerge.execution.executor import LocalExecutor
    from evomerge.export.evaluator import Evaluator
    from evomerge.export.finalists import analyze
    from evomerge.run import preflight
    from evomerge.run.log import RunLog
    from evomerge.run.search import Search
    from evomerge.sources.pool import fingerprint

    torch.set_num_threads(1)
    name, options = STRATEGIES[label]
    cfg = zoo_config(Path(config)).override(**{
        "strategy.name": name, "strategy.options": options, "seed": seed, "budget.max_evals": max(budgets),
        "name": f"{name}-s{seed}"})
    preflight.check(cfg)
    root = Path(work) / f"{label.replace(' ', '-')}-s{seed}"
    timing = root / "bench_search_s.json"
    run = RunLog.open(root) if timing.is_file() else None
    if run is not None and run.config() == cfg:  # finished earlier (--work): reuse it
        search_s, reused = json.loads(timing.read_text()), True
    else:
        shutil.rmtree(root, ignore_errors=True)
        run = RunLog.create(root, cfg, {str(p): fingerprint(p) for p in cfg.model_folders})
        t0 = time.perf_counter()
        Search(run, LocalExecutor, quiet=True).run_to_budget()
        search_s = time.perf_counter() - t0
        timing.write_text(json.dumps(search_s))
        reused = False
    at: dict[int, dict] = {}
    with Evaluator(run, LocalExecutor, quiet=True) as evaluator:
        for budget in budgets:
            a = analyze(run, evaluator, finalists=5, upto=budget)
            cal_pick, export_pick = a.pick("calibration"), a.pick("heldout")
            a.rescore(cal_pick)
            at[budget] = {
                "calibration_pick": {"index": cal_pick.index, "heldout": a.heldout_raw(cal_pick)},
                "export_pick": {"index": export_pick.index, "heldout": a.heldout_raw(export_pick)},
            }
        norm = a.normalizer
        curve = []  # best mean normalized calibration score so far, per evaluation
        best = -math.inf
        for r in a.candidates:
            if r.ok:
                best = max(best, norm.mean(a.calibration_raw(r), "calibration"))
            curve.append(best)
        baselines = {row.name.split("@")[0]: {"label": row.label, "heldout": row.heldout, "calibration": row.calibration}
                     for row in a.baselines.rows}
    return {
        "label": label, "seed": seed, "search_s": search_s, "reused": reused, "at": at, "curve": curve, "baselines": baselines,
        "normalizer": norm, "tasks": [o.task for o in cfg.objectives],
        "failed": sum(not r.ok for r in a.candidates),
    }


def normalized(result: dict, raw: tuple[float, ...] | None) -> float:
    """Mean over skills of held-out accuracy / the best expert's, as export and report compute it (NaN: failed)."""
    return result["normalizer"].mean(raw, "heldout")


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def summarize(results: list[dict], budgets: list[int]) -> tuple[list[str], dict[str, float], dict, dict]:
    """Table rows (markdown), the held-out mean normalized score per baseline, and per (label, budget)
    the mean and standard deviation over seeds (calibration pick)."""
    first = results[0]
    skill_count = len(first["tasks"])
    rows, means, spreads = [], {}, {}
    for label in STRATEGIES:
        runs = [r for r in results if r["label"] == label]
        for budget in budgets:
            cal = [r["at"][budget]["calibration_pick"]["heldout"] for r in runs]
            exp = [r["at"][budget]["export_pick"]["heldout"] for r in runs]
            cal_norm = [normalized(first, h) for h in cal]
            means[(label, budget)] = statistics.fmean(cal_norm)
            spreads[(label, budget)] = statistics.stdev(cal_norm) if len(cal_norm) > 1 else 0.0
            skills = " | ".join(f"{statistics.fmean(h[j] for h in cal):.3f}" for j in range(skill_count))
            rows.append(f"| {label} | {budget} | {skills} | **{mean_sd(cal_norm)}** | "
                        f"{mean_sd([normalized(first, h) for h in exp])} | "
                        + ", ".join(str(r["at"][budget]["calibration_pick"]["index"]) for r in runs) + " |")
    baseline_scores: dict[str, float] = {}
    baseline_rows = []
    names = [n for n in BASELINE_ORDER if n != "base"]
    sources = sorted(n for n in results[0]["baselines"] if n.startswith("source"))
    for name in ["base", *sources, *names]:
        held = [r["baselines"][name]["heldout"] for r in results]
        if any(h is None for h in held):
            baseline_rows.append(f"| {results[0]['baselines'][name]['label']} | — | failed | | | |")
            continue
        norm = [normalized(first, h) for h in held]
        baseline_scores[name] = statistics.fmean(norm)
        skills = " | ".join(f"{statistics.fmean(h[j] for h in held):.3f}" for j in range(skill_count))
        shown_norm = mean_sd(norm) if len(set(norm)) > 1 else f"{norm[0]:.3f}"  # most baselines do not depend on the seed
        baseline_rows.append(f"| {results[0]['baselines'][name]['label']} | — | {skills} | {shown_norm} | | |")
    return rows + baseline_rows, baseline_scores, means, spreads


def plot(results: list[dict], budgets: list[int], baselines: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, label in enumerate(STRATEGIES):
        runs = [r for r in results if r["label"] == label]
        color = f"C{i}"
        n = min(len(r["curve"]) for r in runs)
        xs = range(1, n + 1)
        mean = [statistics.fmean(r["curve"][k] for r in runs) for k in range(n)]
        left.plot(xs, mean, color=color, label=label)
        left.fill_between(xs, [min(r["curve"][k] for r in runs) for k in range(n)],
                          [max(r["curve"][k] for r in runs) for k in range(n)], color=color, alpha=0.15)
        held = [[normalized(first, r["at"][b]["calibration_pick"]["heldout"]) for r in runs] for b in budgets]
        offset = (i - len(STRATEGIES) / 2) * 0.012 * max(budgets)
        right.errorbar([b + offset for b in budgets], [statistics.fmean(h) for h in held],
                       yerr=[[max(0.0, statistics.fmean(h) - min(h)) for h in held], [max(0.0, max(h) - statistics.fmean(h)) for h in held]],
                       color=color, marker="o", capsize=3, label=label)
    for j, (name, value) in enumerate(sorted(baselines.items(), key=lambda kv: -kv[1])):
        if name.startswith("source") or name == "base":
            continue
        right.axhline(value, color="0.4", linestyle=(0, (1 + j, 2)), linewidth=1)
        right.annotate(results[0]["baselines"][name]["label"], (max(budgets) * 1.02, value), fontsize=7, va="center")
    left.set(xlabel="evaluations", ylabel="best mean normalized score so far", title="calibration (what the search sees)")
    right.set(xlabel="evaluation budget", ylabel="mean normalized held-out score",
              title="held-out, calibration pick (min–max over seeds); lines: baselines")
    right.set_xlim(0, max(budgets) * 1.35)
    lowest = min(normalized(first, r["at"][b]["calibration_pick"]["heldout"]) for r in results for b in budgets)
    right.set_ylim(bottom=min(lowest, 0.85) - 0.02)  # the weak baselines (soup, base, experts) are in the table
    left.legend(loc="lower right")
    right.legend(loc="lower left", fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def verdict(means: dict, spreads: dict, baselines: dict[str, float], labels: dict[str, str], budgets: list[int]) -> list[str]:
    """Which strategy wins at each budget, whether the goal holds (>= 0.9 and above every baseline), and
    whether the margin over the best baseline exceeds the winner's seed-to-seed standard deviation."""
    best_baseline = max((v, labels[k]) for k, v in baselines.items())
    lines = []
    for budget in budgets:
        ranked = sorted(((means[(label, budget)], label) for label in STRATEGIES), key=lambda sl: -sl[0])  # ties: table order
        (score, label) = ranked[0]
        goal = score >= 0.9 and score > best_baseline[0]
        margin, sd = score - best_baseline[0], spreads[(label, budget)]
        others = f" (then {', '.join(f'{l} {s:.3f}' for s, l in ranked[1:])})" if len(ranked) > 1 else ""
        lines.append(f"- budget {budget}: best **{label}** {score:.3f}{others}; best baseline {best_baseline[1]} {best_baseline[0]:.3f}; goal (≥ 0.9 and above every baseline) "
                     + ("**met**" if goal else "**missed**") + f"; margin {margin:+.3f} vs. seed sd {sd:.3f}"
                     + (" (within the spread over seeds: not a clear win)" if goal and margin <= sd else ""))
    return lines


def saturation(task_arithmetic: dict, tasks: list[str]) -> str:
    """Task arithmetic's calibration accuracy per skill: a skill it already solves fully on calibration
    gives the search no signal there (a loss on it cannot show, only gains elsewhere)."""
    cal = task_arithmetic["calibration"]
    if cal is None:
        return "- task arithmetic failed on calibration"
    full = [t for t, v in zip(tasks, cal) if v >= 1.0]
    return (f"- {task_arithmetic['label']} on the calibration sets: " + ", ".join(f"{t} {v:.3f}" for t, v in zip(tasks, cal))
            + (f" — saturated on {', '.join(full)}: there the search cannot see a loss" if full else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "zoo.yaml"))
    ap.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 200])
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1 per strategy")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one process, one torch thread each)")
    ap.add_argument("--work", help="keep the run folders here (default: a temporary folder, removed)")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--plot", default=str(REPO / "docs" / "bench_search.png"))
    args = ap.parse_args()
    if min(args.budgets) < 1 or args.seeds < 1 or args.jobs < 1:
        ap.error("--budgets, --seeds and --jobs must be >= 1")
    for name in [s for s in STRATEGIES if s not in args.strategies]:
        del STRATEGIES[name]
    budgets = sorted(set(args.budgets))
    zoo_config(Path(args.config))  # builds the zoo once, before the workers start
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="evm-bench-search-"))
    load0 = os.getloadavg()
    jobs = [(label, seed) for seed in range(args.seeds) for label in STRATEGIES]
    results = []
    try:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(one_run, label, seed, args.config, budgets, str(work)) for label, seed in jobs]
            for future in futures:
                r = future.result()
                results.append(r)
                print(f"{r['label']:<11} seed {r['seed']}: search {r['search_s']:.0f} s, " + ", ".join(
                    f"@{b} {normalized(r, r['at'][b]['calibration_pick']['heldout']):.3f}" for b in budgets), flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    rows, baselines, means, spreads = summarize(results, budgets)
    plot(results, budgets, baselines, Path(args.plot))

    import torch

    tasks = [t.removeprefix("zoo_") for t in results[0]["tasks"]]
    command = (f".venv/bin/python scripts/bench_search.py --config {shown(args.config)} --budgets {' '.join(map(str, budgets))} "
               f"--seeds {args.seeds} --jobs {args.jobs}" + (f" --work {shown(args.work)}" if args.work else "") + (f" --strategies {' '.join(repr(s) for s in STRATEGIES)}" if len(STRATEGIES) < 5 else ""))
    failed = sum(r["failed"] for r in results)
    lines = [
        "## Search quality on the zoo (`scripts/bench_search.py`)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {os.cpu_count()} cores, {cpu_model()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}; load average (1 min) before / after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f}",
        f"- command: `{command}`",
        f"- {len(STRATEGIES)} strategies × {args.seeds} seeds, each one run of `{shown(args.config)}` with that strategy and seed to "
        f"{max(budgets)} evaluations (in-process worker); a budget B is the run's first B candidates (no strategy knows its budget); "
        f"{failed} failed candidates in all; search wall time per run: " + ", ".join(
            f"{label} {statistics.median(r['search_s'] for r in results if r['label'] == label):.0f} s" for label in STRATEGIES)
        + f" (median over seeds, {args.jobs} runs at a time)"
        + (f"; {sum(r['reused'] for r in results)} of {len(results)} runs reused from an earlier invocation's --work folder "
           "(their searches ran then; the load average above is this invocation's)" if any(r["reused"] for r in results) else ""),
        "- held-out accuracy per skill (mean over seeds) of the **calibration pick** (the front member with the best mean normalized "
        "calibration score, chosen without held-out data); mean normalized = mean over skills of accuracy / best expert's accuracy, "
        "mean ± sd over seeds; *export pick* = what `evomerge export` picks by default (best of 5 finalists on held-out, so slightly "
        "optimistic); baselines scored by the same worker (task arithmetic: λ chosen on calibration)",
        saturation(results[0]["baselines"]["task_arithmetic"], tasks),
        f"- plot: `{shown(args.plot)}`",
        "",
        "| strategy | budget | " + " | ".join(tasks) + " | mean normalized (calibration pick) | export pick | candidate picked per seed |",
        "|---|---:|" + "---:|" * len(tasks) + "---|---|---|",
        *rows,
        "",
        *verdict(means, spreads, baselines, {k: v["label"] for k, v in results[0]["baselines"].items()}, budgets),
    ]
    write_section(Path(args.out), "bench_search", "\n".join(lines))
    print("\n".join(lines[-len(budgets):]))
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
