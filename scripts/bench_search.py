#!/usr/bin/env python
"""Search value on the zoo: every strategy × search metric × seed, the calibration pick against every fixed recipe, on
held-out data.

    .venv/bin/python scripts/bench_search.py [--config configs/zoo.yaml] [--zoo zoo/seed1-llama] [--budgets 50 100 300]
        [--seeds 3] [--strategies cmaes niches ...] [--metrics acc log-likelihood] [--jobs 2] [--work DIR] [--no-write]

For each strategy, search metric and seed, one run of the config with them goes to the largest budget
(in-process worker, one process per run, ``--jobs`` runs at a time). No strategy knows its budget, so
the run's first B candidates *are* the run with budget B: at each budget the script analyzes the run
as it stood then (``analyze(..., upto=B)``) and takes the **calibration pick** — what ``evomerge
export`` picks by default, the front member with the best mean normalized calibration score of the
reported metric, chosen without held-out data — and scores it on the held-out tasks.

Fixed recipes: every run scores them itself, by the same worker on the same tasks — the rows of its
``Baselines``, which the report shows too (``evomerge.recipes.fixed`` lists the families and grids; each grid's
member and the greedy soup's sources are chosen on calibration); the table has a row for each. "Best fixed" is
the merge among them with the best held-out score — the fixed recipe a user could at best have chosen, so a gain over
it is not flattered by the choice. Mean normalized = mean over skills of held-out accuracy / the best
expert's, as export and report compute it.

Search metrics: ``acc`` (the objectives' reported metric) and ``log-likelihood`` (``search_metric:
perplexity``: the strategy optimizes the answers' log-likelihood from the same lm-eval requests, while
the front's pick and every table use accuracy). A strategy runs with the config's options when the
config names it, with its own defaults otherwise; the row that is the config as written is marked
*(default)*. ``--set SECTION.FIELD=VALUE`` changes the config for an experiment (with ``--no-write``). ``--zoo DIR``
runs the config on another zoo build: that zoo's base, experts (by folder name) and task folder replace the config's.

Writes the plot (``docs/bench_search.png``, or ``docs/bench_search-<zoo>.png`` with ``--zoo``) and
the section ``bench_search`` (``bench_search-<zoo>``; ``bench_search-<name>`` for a config of another family, e.g.
``smollm2``) of docs/BENCHMARKS.md through ``publish``. Run
folders go to ``--work`` (default: a temporary folder, removed at the end); a finished run found there
with the same config is reused (only the analysis runs again).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from typing import TYPE_CHECKING, Any

from benchdoc import REPO, cpu_model, fail, publish, shown, zoo_config  # noqa: E402 (first: sets the offline environment)

if TYPE_CHECKING:
    from evomerge.config.search import SearchConfig

STRATEGIES = {  # label -> (strategy name, options)
    "cmaes": ("cmaes", {}),
    "niches": ("niches", {}),
    "nsga2": ("nsga2", {}),
    "optuna TPE": ("optuna", {"sampler": "tpe"}),
    "random": ("random", {}),
}
SEARCH_METRICS = {"acc": None, "log-likelihood": "perplexity"}  # label -> every objective's search_metric
GOAL_MARGIN = 0.08  # the number: the default config's pick >= best fixed + this at the largest budget


def on_zoo(cfg: SearchConfig, zoo_dir: Path | None) -> SearchConfig:
    """The config over another zoo build: its base, its experts named as the config's model folders, its tasks."""
    if zoo_dir is None:
        return cfg
    from evomerge.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    missing = [p.name for p in cfg.sources.models if p.name not in zoo.experts]
    if missing:
        fail(f"--zoo {zoo_dir}: no expert '{missing[0]}' (it has {', '.join(zoo.experts)})")
    sources = dataclasses.replace(cfg.sources, base=zoo.base,
                                  models=tuple(zoo.experts[p.name] for p in cfg.sources.models))
    return dataclasses.replace(cfg, sources=sources, scoring=dataclasses.replace(cfg.scoring, task_path=zoo.task_dir))


def base_config(config: str, zoo: str | None, settings: list[str]) -> SearchConfig:
    """The config file, on ``zoo`` if given, with the ``--set SECTION.FIELD=VALUE`` changes (values in YAML)."""
    import yaml

    from evomerge.errors import EvomergeError

    cfg = on_zoo(zoo_config(Path(config)), Path(zoo) if zoo else None)
    changes = {}
    for setting in settings:
        key, sep, text = setting.partition("=")
        if not sep or "." not in key:
            fail(f"--set {setting}: write SECTION.FIELD=VALUE, e.g. genome.split_by_kind=true")
        changes[key] = yaml.safe_load(text)
    try:
        return cfg.override(**changes)
    except (EvomergeError, TypeError, AttributeError) as e:
        fail(f"--set {' '.join(settings)}: {e}")


def variant(cfg: SearchConfig, strategy: str, metric: str, seed: int, budget: int) -> SearchConfig:
    """The config with this strategy (the config's options if it names it), search metric, seed and budget."""
    name, options = STRATEGIES[strategy]
    if name == cfg.strategy.name:
        options = {**options, **cfg.strategy.options}
    objectives = tuple(dataclasses.replace(o, search_metric=SEARCH_METRICS[metric]) for o in cfg.objectives)
    return dataclasses.replace(cfg, objectives=objectives).override(**{
        "strategy.name": name, "strategy.options": options, "seed": seed, "budget.max_evals": budget})


def is_default(cfg: SearchConfig, strategy: str, metric: str) -> bool:
    """Whether this strategy and search metric are the config as written."""
    return dataclasses.replace(variant(cfg, strategy, metric, cfg.seed, cfg.budget.max_evals), name=cfg.name) == cfg


def search(cfg: SearchConfig, root: Path) -> tuple[Any, float, bool]:
    """The finished run in ``root`` (reused when its config matches), its search seconds, whether reused."""
    from evomerge.execution.executor import LocalExecutor
    from evomerge.run.log import RunLog
    from evomerge.run.search import Search
    from evomerge.sources.pool import fingerprint

    timing = root / "bench_search_s.json"
    if timing.is_file() and RunLog.open(root).config() == cfg:
        return RunLog.open(root), json.loads(timing.read_text()), True
    shutil.rmtree(root, ignore_errors=True)
    run = RunLog.create(root, cfg, {str(p): fingerprint(p) for p in cfg.model_folders})
    t0 = time.perf_counter()
    Search(run, LocalExecutor, quiet=True).run_to_budget()
    seconds = time.perf_counter() - t0
    timing.write_text(json.dumps(seconds))
    return run, seconds, False


def one_run(strategy: str, metric: str, seed: int, config: str, zoo: str | None, settings: list[str],
            budgets: list[int], work: str) -> dict:
    """Search with one strategy, search metric and seed to the largest budget; the calibration pick at every budget,
    every fixed recipe, and the best-so-far calibration curve — all as mean normalized scores."""
    import torch

    from evomerge.execution.executor import LocalExecutor
    from evomerge.export.evaluator import Evaluator
    from evomerge.export.finalists import analyze
    from evomerge.run import preflight

    torch.set_num_threads(1)
    base = base_config(config, zoo, settings)
    cfg = variant(base, strategy, metric, seed, max(budgets))
    cfg = dataclasses.replace(cfg, name=f"{cfg.name}-{cfg.strategy.name}-{metric}-s{seed}")
    preflight.check(cfg)
    run, search_s, reused = search(cfg, Path(work) / f"{strategy.replace(' ', '-')}-{metric}-s{seed}")
    at: dict[int, dict] = {}
    with Evaluator(run, LocalExecutor, quiet=True) as evaluator:
        for budget in budgets:
            a = analyze(run, evaluator, finalists=0, upto=budget)
            pick = a.pick("calibration")
            at[budget] = {"index": pick.index, "heldout": a.normalizer.mean(a.heldout_raw(pick), "heldout"),
                          "calibration": a.normalizer.mean(a.calibration_raw(pick), "calibration")}
    norm = a.normalizer
    curve, best = [], -math.inf  # best mean normalized calibration score so far, per evaluation
    for r in a.candidates:
        if r.ok:
            best = max(best, norm.mean(a.calibration_raw(r), "calibration"))
        curve.append(best)
    best_fixed = a.baselines.best_fixed("heldout")
    return {
        "strategy": strategy, "metric": metric, "seed": seed, "default": is_default(base, strategy, metric),
        "search_s": search_s, "reused": reused, "at": at, "curve": curve,
        "failed": sum(not r.ok for r in a.candidates), "load": os.getloadavg()[0],
        "baselines": {row.fixed.family: {"label": row.label, "heldout": norm.mean(row.heldout, "heldout"),
                                         "calibration": norm.mean(row.calibration, "calibration")}
                      for row in a.baselines.rows},
        "best_fixed": {"label": best_fixed.label, "heldout": norm.mean(best_fixed.heldout, "heldout")},
    }


# --- tables ----------------------------------------------------------------------------------------


def mean_sd(values: list[float]) -> str:
    return f"{values[0]:.3f}" if len(values) < 2 else f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def cells(results: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """(strategy, search metric, its runs by seed) in table order."""
    out = []
    for strategy in dict.fromkeys(r["strategy"] for r in results):
        for metric in dict.fromkeys(r["metric"] for r in results):
            runs = sorted((r for r in results if r["strategy"] == strategy and r["metric"] == metric),
                          key=lambda r: r["seed"])
            if runs:
                out.append((strategy, metric, runs))
    return out


def search_table(results: list[dict], budgets: list[int]) -> list[str]:
    """Per strategy, search metric and budget: the calibration pick on held-out against the run's best fixed recipe."""
    lines = ["| strategy | search metric | budget | held-out mean norm. (mean ± sd) | per seed | Δ best fixed per seed "
             "| above every fixed recipe | candidate picked per seed |", "|---|---|---:|---:|---|---|---:|---|"]
    for strategy, metric, runs in cells(results):
        label = f"**{strategy}** *(default)*" if runs[0]["default"] else strategy
        for budget in budgets:
            held = [r["at"][budget]["heldout"] for r in runs]
            gains = [h - r["best_fixed"]["heldout"] for h, r in zip(held, runs, strict=True)]
            lines.append(f"| {label} | {metric} | {budget} | **{mean_sd(held)}** | "
                         f"{', '.join(f'{h:.3f}' for h in held)} | {', '.join(f'{g:+.3f}' for g in gains)} | "
                         f"{sum(g > 0 for g in gains)}/{len(runs)} | "
                         f"{', '.join(str(r['at'][budget]['index']) for r in runs)} |")
    return lines


def chosen(family: str) -> bool:
    """Whether a fixed-recipe family's setting is chosen per run (a grid's member, the greedy soup's sources): the
    table shows it in each seed's cell."""
    from evomerge.recipes.fixed import GREEDY_SOUP, GRID_FAMILIES

    return family in GRID_FAMILIES or family == GREEDY_SOUP


def baseline_table(results: list[dict]) -> list[str]:
    """Every fixed recipe per seed (held-out mean normalized, the setting chosen on calibration) and the best of
    them."""
    seeds = sorted({r["seed"] for r in results})
    # every run of a seed scores the same baselines
    by_seed = {s: next(r for r in results if r["seed"] == s) for s in seeds}
    lines = ["| fixed recipe | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
    for family, row in by_seed[seeds[0]]["baselines"].items():
        shown_cells = []
        for s in seeds:
            b = by_seed[s]["baselines"][family]
            setting = b["label"].partition(" (")[2].removesuffix(")") if chosen(family) else ""
            shown_cells.append(f"{b['heldout']:.3f}" + (f" ({setting})" if setting else ""))
        lines.append(f"| {row['label'].split(' (')[0] if chosen(family) else row['label']} | "
                     + " | ".join(shown_cells) + " |")
    lines.append("| **best fixed** (held-out) | " + " | ".join(
        f"**{by_seed[s]['best_fixed']['heldout']:.3f}** ({by_seed[s]['best_fixed']['label']})" for s in seeds) + " |")
    return lines


def verdict(results: list[dict], budgets: list[int]) -> list[str]:
    """The default config's numbers against the goal, and the best cell at each budget."""
    lines = []
    top, mid = max(budgets), (100 if 100 in budgets else min(budgets))
    for strategy, metric, runs in cells(results):
        if not runs[0]["default"]:
            continue
        gains = {b: [r["at"][b]["heldout"] - r["best_fixed"]["heldout"] for r in runs] for b in (mid, top)}
        lines.append(f"- default config ({strategy}, {metric}): at {top} evaluations the pick beats the best fixed "
                     f"recipe by {', '.join(f'{g:+.3f}' for g in gains[top])} (goal ≥ +{GOAL_MARGIN:.2f} in every "
                     f"seed: {'**met**' if min(gains[top]) >= GOAL_MARGIN else '**missed**'}); at {mid}: "
                     f"{', '.join(f'{g:+.3f}' for g in gains[mid])} (goal > 0 in every seed: "
                     f"{'**met**' if min(gains[mid]) > 0 else '**missed**'})")
    for budget in budgets:
        ranked = sorted(((statistics.fmean(r["at"][budget]["heldout"] for r in runs), f"{s} / {m}")
                         for s, m, runs in cells(results)),
                        reverse=True)
        lines.append(f"- budget {budget}: best {ranked[0][1]} {ranked[0][0]:.3f}; worst {ranked[-1][1]} "
                     f"{ranked[-1][0]:.3f}")
    return lines


def plot(results: list[dict], budgets: list[int], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 5), dpi=110, layout="constrained")
    left, right = fig.subplots(1, 2)
    strategies = list(dict.fromkeys(r["strategy"] for r in results))
    styles = dict(zip(SEARCH_METRICS, ("-", "--"), strict=True))
    for k, (strategy, metric, runs) in enumerate(cells(results)):
        color, style = f"C{strategies.index(strategy)}", styles[metric]
        label = f"{strategy} / {metric}" + (" (default)" if runs[0]["default"] else "")
        n = min(len(r["curve"]) for r in runs)
        left.plot(range(1, n + 1), [statistics.fmean(r["curve"][i] for r in runs) for i in range(n)], style,
                  color=color, label=label)
        held = [[r["at"][b]["heldout"] for r in runs] for b in budgets]
        means = [statistics.fmean(h) for h in held]
        offset = (k - len(cells(results)) / 2) * 0.006 * max(budgets)
        right.errorbar([b + offset for b in budgets], means,
                       yerr=[[m - min(h) for m, h in zip(means, held, strict=True)],
                              [max(h) - m for m, h in zip(means, held, strict=True)]],
                       color=color, linestyle=style, marker="o", markersize=3, capsize=2, label=label)
    best = statistics.fmean(r["best_fixed"]["heldout"] for r in results)
    right.axhline(best, color="black", linewidth=1.2)
    right.annotate("best fixed recipe", (max(budgets) * 1.02, best), fontsize=8, va="center")
    right.axhline(best + GOAL_MARGIN, color="black", linestyle=":", linewidth=1)
    right.annotate(f"best fixed + {GOAL_MARGIN:.2f}", (max(budgets) * 1.02, best + GOAL_MARGIN), fontsize=8,
                   va="center")
    left.set(xlabel="evaluations", ylabel="best mean normalized calibration accuracy so far",
             title="calibration (what the search sees)")
    right.set(xlabel="evaluation budget", ylabel="mean normalized held-out accuracy",
              title="held-out, calibration pick (mean, min–max over seeds)")
    right.set_xlim(0, max(budgets) * 1.3)
    left.legend(fontsize=7, loc="lower right")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


# --- main ------------------------------------------------------------------------------------------


def zoo_shown(folder: Path) -> str:
    """A zoo build as this checkout names it: ``zoo/<name>`` where the checkout's ``zoo/<name>`` is (or links to)
    it — a worktree's zoo entries are symlinks to shared builds, whose paths ``shown`` would print — else as
    ``shown`` prints it."""
    entry = REPO / "zoo" / folder.name
    return f"zoo/{folder.name}" if entry.resolve() == folder.resolve() else shown(folder)


def run_all(args: argparse.Namespace, budgets: list[int], work: Path) -> list[dict]:
    jobs = [(s, m, seed) for seed in range(args.seeds) for s in args.strategies for m in args.metrics]
    results = []
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(one_run, s, m, seed, args.config, args.zoo, args.set, budgets, str(work))
                   for s, m, seed in jobs]
        for future in futures:
            r = future.result()
            results.append(r)
            print(f"{r['strategy']:<11} {r['metric']:<14} seed {r['seed']}: search {r['search_s']:.0f} s, best fixed "
                  f"{r['best_fixed']['heldout']:.3f}; "
                  + ", ".join(f"@{b} {r['at'][b]['heldout']:.3f}" for b in budgets), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "zoo.yaml"))
    ap.add_argument("--zoo", help="run the config on this zoo build instead of the one it names")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                    help="change the config (a YAML value), e.g. genome.split_by_kind=true; repeatable (for "
                    "experiments)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[50, 100, 300])
    ap.add_argument("--seeds", type=int, default=3, help="search seeds 0 .. N-1 per strategy and search metric")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--metrics", nargs="+", default=list(SEARCH_METRICS), choices=list(SEARCH_METRICS),
                    help="search metrics")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (one process, one torch thread each)")
    ap.add_argument("--work", help="keep the run folders here (default: a temporary folder, removed)")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section, leave docs/ alone")
    args = ap.parse_args()
    if min(args.budgets) < 1 or args.seeds < 1 or args.jobs < 1:
        ap.error("--budgets, --seeds and --jobs must be >= 1")
    budgets = sorted(set(args.budgets))
    cfg = base_config(args.config, args.zoo, args.set)  # builds the default zoo once, first
    # The zoo config's own section, or one per other zoo build (--zoo) or other config (its name: smollm2).
    default = Path(args.config).resolve() == (REPO / "configs" / "zoo.yaml").resolve()
    suffix = f"-{Path(args.zoo).resolve().name}" if args.zoo else "" if default else f"-{cfg.name}"
    plot_path = REPO / "docs" / f"bench_search{suffix}.png"
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="evm-bench-search-"))
    load0, t0 = os.getloadavg(), time.perf_counter()
    try:
        results = run_all(args, budgets, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    if not args.no_write:
        plot(results, budgets, plot_path)

    import torch

    command = (f".venv/bin/python scripts/bench_search.py --config {shown(args.config)}"
               + (f" --zoo {zoo_shown(Path(args.zoo))}" if args.zoo else "")
               + "".join(f" --set '{s}'" for s in args.set) + f" --budgets {' '.join(map(str, budgets))} --seeds "
               f"{args.seeds} --strategies {' '.join(repr(s) for s in args.strategies)} --metrics "
               f"{' '.join(args.metrics)} --jobs {args.jobs}" + (f" --work {shown(args.work)}" if args.work else ""))
    reused, zoo = sum(r["reused"] for r in results), zoo_shown(cfg.sources.base.parent.parent)
    body = [
        f"## Search value on {'the zoo ' if zoo.startswith('zoo/') else ''}`{zoo}` (`scripts/bench_search.py`)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {os.cpu_count()} cores, {cpu_model()}; Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average (1 min) before / after: {load0[0]:.2f} "
        f"/ {os.getloadavg()[0]:.2f}; wall time {(time.perf_counter() - t0) / 60:.0f} min",
        f"- command: `{command}`",
        f"- {len(args.strategies)} strategies × {len(args.metrics)} search metrics × {args.seeds} seeds, each one run "
        f"of `{shown(args.config)}`{' with ' + ', '.join(args.set) if args.set else ''} to {max(budgets)} evaluations "
        f"(genome: {', '.join(cfg.genome.methods)}, layer granularity "
        f"{cfg.genome.layer_granularity}{', split by kind' if cfg.genome.split_by_kind else ''}); a budget B is the "
        f"run's first B candidates; {sum(r['failed'] for r in results)} failed candidates in all; search wall time per "
        "run (median): "
        + ", ".join(f"{s} / {m} {statistics.median(r['search_s'] for r in runs):.0f} s"
                    for s, m, runs in cells(results))
        + f" ({args.jobs} runs at a time"
        + (f"; {reused} of {len(results)} runs reused from `--work`, searched earlier" if reused else "") + ")",
        "- every score is a mean normalized **held-out** accuracy (mean over skills of accuracy / the best expert's); "
        "the pick is the **calibration pick** (`evomerge export`'s default: the front member with the best calibration "
        "accuracy, no held-out data); search metric `log-likelihood` = `search_metric: perplexity` (the search "
        "optimizes the answers' log-likelihood, the pick and the tables use accuracy); Δ best fixed = pick − the run's "
        "best fixed recipe on held-out",
        f"- plot: `{shown(plot_path)}`",
        "",
        "Fixed recipes, the rows of each run's report, scored by its own worker (each grid's setting and the greedy "
        "soup's sources chosen on calibration; RegMean and Fisher from the run's calibration statistics; DARE's draws "
        "follow the seed):",
        "",
        *baseline_table(results),
        "",
        *search_table(results, budgets),
        "",
        *verdict(results, budgets),
    ]
    publish(args.out, f"bench_search{suffix}", "\n".join(body), write=not args.no_write)


if __name__ == "__main__":
    main()
