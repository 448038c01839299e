#!/usr/bin/env python
"""Cheap fitness: held-out gain over the best fixed recipe against calibration items and tokens scored, full vs
racing; and what the export scores, every grid member in full vs raced.

    .venv/bin/python scripts/bench_cost.py [--config configs/zoo.yaml] [--zoo DIR] [--parts search export]
        [--evals 300] [--racing-evals N] [--seeds 3] [--strategies cmaes nsga2] [--z 1.5] [--chunk-items 64]
        [--export-evals 300] [--export-set SECTION.FIELD=VALUE ...] [--work DIR] [--no-write]

``search``: each strategy × search seed runs twice on the same config: ``scoring.fidelity: full`` and
``racing`` (the chunk size and z given). A run is ``scripts/bench_search.py``'s: searched to ``--evals``
candidates (a racing run to ``--racing-evals``, default ``--evals``: at a fraction of the tokens it can afford
more candidates), its calibration pick (chosen without held-out data; with racing the finalists are completed on
every calibration item first) scored on held-out against the run's best fixed recipe on held-out. The cost
columns count the calibration items and tokens the search scored (read from the run log: a raced candidate's
``items`` and every record's ``tokens``), against what full scoring scores; wall time is the search's. The
issue's target (issue 20): racing reaches the full run's held-out gain within 0.01 with at most 1/4 of its
scored tokens, in every seed; the verdict compares the racing run at its budget with the full run at ``--evals``.
Run folders go to ``--work`` (default: a temporary folder, removed); a finished run found there with the same
config is read back instead of searched again (the full runs are shared by every racing setting), and the table
says which rows were.

``export``: the config as written (the demo's: ``scripts/demo``; ``--export-set`` changes it) searched to
``--export-evals`` candidates,
then exported twice from copies of its folder — every grid member scored on every item (the export before
its grids were raced) and raced — with the demo's 5 finalists and the calibration pick: the jobs, items and
tokens each export scored (baselines, finalists, completions), its time, the pick and the best fixed recipe
on held-out (the target: ≤ 1/4 of the tokens, the same pick and the same best-fixed row).

Reduced runs (``--evals``, ``--seeds``, ``--strategies``, ``--export-evals``) are for a shared machine; each
section says which command produced it. Writes the sections ``bench_cost-<zoo>-<setting>`` (the zoo's folder name;
the strategies, z, chunk size and budgets, e.g. ``bench_cost-seed0-llama-cmaes-z1-c32-300-r400``: one section
and plot ``docs/<section>.png`` per setting) and ``bench_cost_export`` of docs/BENCHMARKS.md (unless
``--no-write``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchdoc import REPO, cpu_model, publish, shown

from bench_search import (
    one_run,  # first: benchdoc, imported by it, sets the offline environment
)

TARGET_GAIN_GAP, TARGET_FRACTION = 0.01, 0.25  # issue 20's numbers


def cost_run(strategy: str, seed: int, fidelity: str, args: argparse.Namespace, work: Path) -> dict:
    """One search and its analysis, with the calibration items its candidates were scored on."""
    from evomerge.run.log import RunLog
    from evomerge.run.racing import scoring_cost

    settings = [f"scoring.fidelity={fidelity}"]  # a full run's config leaves the racing knobs alone: reused across them
    evals, folder = args.evals, work / fidelity
    if fidelity == "racing":
        settings += [f"scoring.chunk_items={args.chunk_items}", f"scoring.racing_z={args.z}"]
        evals, folder = args.racing_evals, work / f"racing-z{args.z:g}-c{args.chunk_items}-e{args.racing_evals}"
    result = one_run(strategy, "acc", seed, args.config, args.zoo, settings, [evals], str(folder))
    cost = scoring_cost(RunLog.open(folder / f"{strategy}-acc-s{seed}").candidates()[:evals])
    assert cost is not None and cost.tokens is not None
    result.update(fidelity=fidelity, evals=evals, items=cost.items, full_items=cost.full_items, tokens=cost.tokens,
                  full_tokens=cost.full_tokens, gain=result["at"][evals]["heldout"] - result["best_fixed"]["heldout"])
    return result


def table(results: list[dict]) -> list[str]:
    """One row per run; "of full" is against every item of the run's own candidates (its budget)."""
    lines = ["| strategy | seed | fidelity | evaluations | items scored | of full | tokens scored | of full | "
             "search s | held-out pick | best fixed | gain |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        searched = f"{r['search_s']:.0f}" + (" (read back)" if r["reused"] else "")
        lines.append(f"| {r['strategy']} | {r['seed']} | {r['fidelity']} | {r['evals']} | {r['items']:,} | "
                     f"{r['items'] / r['full_items']:.2f} | {r['tokens']:,} | {r['tokens'] / r['full_tokens']:.2f} | "
                     f"{searched} | {r['at'][r['evals']]['heldout']:.3f} | {r['best_fixed']['heldout']:.3f} | "
                     f"{r['gain']:+.3f} |")
    return lines


def verdicts(results: list[dict]) -> list[str]:
    """Per strategy and seed: does racing (at its budget) meet the issue's target against the full run (at its)?"""
    lines = []
    for full in (r for r in results if r["fidelity"] == "full"):
        race = next(r for r in results
                    if r["fidelity"] == "racing" and (r["strategy"], r["seed"]) == (full["strategy"], full["seed"]))
        fraction, gap = race["tokens"] / full["tokens"], full["gain"] - race["gain"]
        met = fraction <= TARGET_FRACTION and gap <= TARGET_GAIN_GAP
        lines.append(f"- {full['strategy']} seed {full['seed']}: racing at {race['evals']} evaluations scored "
                     f"{fraction:.2f} of the full run's tokens at {full['evals']}, gain {race['gain']:+.3f} vs "
                     f"{full['gain']:+.3f} — "
                     f"target {'**met**' if met else '**missed**'}")
    return lines


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=110, layout="constrained")
    ax = fig.subplots()
    for k, strategy in enumerate(dict.fromkeys(r["strategy"] for r in results)):
        for fidelity, marker in (("full", "o"), ("racing", "^")):
            rs = [r for r in results if r["strategy"] == strategy and r["fidelity"] == fidelity]
            ax.scatter([r["tokens"] for r in rs], [r["gain"] for r in rs], marker=marker, color=f"C{k}",
                       label=f"{strategy} / {fidelity}")
    ax.axhline(0, color="black", linewidth=1)
    ax.set(xlabel="calibration tokens scored by the search", ylabel="held-out gain over the best fixed recipe")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def export_runs(args: argparse.Namespace, work: Path) -> list[dict]:
    """The config searched to ``--export-evals``, exported from two copies of its folder: grids in full, raced."""
    from bench_search import base_config, search
    from evomerge.execution.executor import LocalExecutor
    from evomerge.export.evaluator import Evaluator
    from evomerge.export.finalists import DEFAULT_FINALISTS, analyze
    from evomerge.export.report import export_cost
    from evomerge.run.log import RunLog
    from evomerge.run.records import CompletedRecord

    cfg = base_config(args.config, args.zoo, args.export_set).override(**{"budget.max_evals": args.export_evals})
    run, search_s, _ = search(cfg, work / "export-demo")
    results = []
    for race in (False, True):
        folder = work / f"export-{'raced' if race else 'full'}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(run.root, folder, ignore=shutil.ignore_patterns("session.lock"))
        copy = RunLog.open(folder)
        before, t0 = len(copy.records), time.perf_counter()
        with Evaluator(copy, LocalExecutor, quiet=True) as evaluator:
            a = analyze(copy, evaluator, finalists=DEFAULT_FINALISTS, race_baselines=race)
            pick = a.pick("calibration")
        items, tokens = export_cost(copy.records[before:])
        heldout = export_cost([r for r in copy.records[before:] if getattr(r, "split", "heldout") == "heldout"
                               and not isinstance(r, CompletedRecord)])[1]
        best = a.baselines.best_fixed("heldout")
        results.append({"race": race, "jobs": evaluator.evaluated, "items": items, "tokens": tokens, "heldout": heldout,
                        "seconds": time.perf_counter() - t0, "pick": pick.index, "best": best.label,
                        "best_row": (best.calibration, best.heldout), "stopped": len(a.baselines.stopped),
                        "grid": sum(len(g) for g in a.baselines.grids.values()), "search_s": search_s,
                        "fidelity": run.config().scoring.fidelity})
    return results


def export_table(results: list[dict]) -> list[str]:
    full = results[0]
    lines = ["| export | jobs | items scored | tokens scored | of full | of which held-out | s | "
             "grid members stopped | pick | best fixed recipe on held-out |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {'grids raced' if r['race'] else 'every grid member in full'} | {r['jobs']} | "
                     f"{r['items']:,} | {r['tokens']:,} | {r['tokens'] / full['tokens']:.2f} | {r['heldout']:,} | "
                     f"{r['seconds']:.0f} | {r['stopped']} of {r['grid']} | {r['pick']} | {r['best']} |")
    raced = results[1]
    same = (raced["pick"], raced["best"], raced["best_row"]) == (full["pick"], full["best"], full["best_row"])
    met = same and raced["tokens"] <= TARGET_FRACTION * full["tokens"]
    return [*lines, "", f"- raced export: {raced['tokens'] / full['tokens']:.2f} of the tokens, "
            f"{'the same' if same else 'NOT the same'} pick and best-fixed row (raw values on both splits) — target "
            f"{'**met**' if met else '**missed**'}; held-out scoring (the table's rows and the finalists, unchanged) "
            f"is {full['heldout'] / full['tokens']:.2f} of the full export's tokens by itself"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "zoo.yaml"))
    ap.add_argument("--zoo", help="run the config on this zoo build instead of the one it names")
    ap.add_argument("--evals", type=int, default=300)
    ap.add_argument("--racing-evals", type=int, help="the racing runs' budget (default: --evals)")
    ap.add_argument("--seeds", type=int, default=3, help="search seeds 0 .. N-1")
    ap.add_argument("--strategies", nargs="+", default=["cmaes", "nsga2"])
    ap.add_argument("--z", type=float, default=1.5)
    ap.add_argument("--chunk-items", type=int, default=64)
    ap.add_argument("--parts", nargs="+", choices=["search", "export"], default=["search", "export"])
    ap.add_argument("--export-evals", type=int, default=300, help="the demo's search budget before its export")
    ap.add_argument("--export-set", nargs="*", default=[], metavar="SECTION.FIELD=VALUE",
                    help="change the export's config, e.g. scoring.chunk_items=32 (the grids race with its knobs)")
    ap.add_argument("--work", help="keep the run folders here (default: a temporary folder, removed)")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section, leave docs/ alone")
    args = ap.parse_args()
    args.racing_evals = args.racing_evals or args.evals
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="evm-bench-cost-"))
    try:
        if "search" in args.parts:
            search_part(args, work)
        if "export" in args.parts:
            export_part(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def machine(load0: tuple[float, ...], t0: float) -> str:
    return (f"- date: {dt.date.today().isoformat()}; machine: {os.cpu_count()} cores, {cpu_model()}; load average "
            f"(1 min) before / after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f}; wall time "
            f"{(time.perf_counter() - t0) / 60:.0f} min")


def search_part(args: argparse.Namespace, work: Path) -> None:
    load0, t0 = os.getloadavg(), time.perf_counter()
    results = [cost_run(s, seed, fidelity, args, work) for s in args.strategies for seed in range(args.seeds)
               for fidelity in ("full", "racing")]
    command = (f".venv/bin/python scripts/bench_cost.py --parts search --config {shown(args.config)}"
               + (f" --zoo {shown(args.zoo)}" if args.zoo else "")
               + f" --evals {args.evals}"
               + (f" --racing-evals {args.racing_evals}" if args.racing_evals != args.evals else "")
               + f" --seeds {args.seeds} --strategies {' '.join(args.strategies)} --z {args.z:g}"
               f" --chunk-items {args.chunk_items}" + (f" --work {shown(args.work)}" if args.work else ""))
    name = section_name(args)
    racing = f", racing {args.racing_evals}" if args.racing_evals != args.evals else ""
    body = [
        f"## Cheap fitness: racing against full scoring on `{zoo_name(args)}`, {', '.join(args.strategies)}, z "
        f"{args.z:g}, chunks of {args.chunk_items}, {args.evals} evaluations{racing} (`scripts/bench_cost.py`)",
        "",
        machine(load0, t0),
        f"- command: `{command}`",
        f"- budgets: full scoring {args.evals} evaluations, racing {args.racing_evals} (chunks of {args.chunk_items} "
        f"items, z {args.z:g}); a row *read back* was searched by an earlier invocation into `--work` with the same "
        "config and only analyzed again (its search s is that search's)",
        ("- cost is counted in calibration items and tokens (``Scorer.tokens``) scored by the search; the export's "
         "cost is the section `bench_cost_export`"),
        "",
        *table(results),
        "",
        *verdicts(results),
        "",
        f"![gain against tokens scored]({name}.png)",
    ]
    if not args.no_write:
        plot(results, REPO / "docs" / f"{name}.png")
    publish(args.out, name, "\n".join(body), write=not args.no_write)


def zoo_name(args: argparse.Namespace) -> str:
    """The zoo build's folder name: the one holding the base the config runs on (``--zoo``'s when given), as
    bench_search finds the zoo of its runs (``<zoo>/models/base``)."""
    from bench_search import base_config

    return base_config(args.config, args.zoo, []).sources.base.resolve().parent.parent.name


def section_name(args: argparse.Namespace) -> str:
    """The search part's section (and plot) name: one per zoo build and setting, so settings keep their sections."""
    racing = f"-r{args.racing_evals}" if args.racing_evals != args.evals else ""
    setting = f"{'-'.join(args.strategies)}-z{args.z:g}-c{args.chunk_items}-{args.evals}{racing}"
    return f"bench_cost-{zoo_name(args)}-{setting}"


def export_part(args: argparse.Namespace, work: Path) -> None:
    load0, t0 = os.getloadavg(), time.perf_counter()
    results = export_runs(args, work)
    command = (f".venv/bin/python scripts/bench_cost.py --parts export --config {shown(args.config)}"
               + (f" --zoo {shown(args.zoo)}" if args.zoo else "") + f" --export-evals {args.export_evals}"
               + (f" --export-set {' '.join(args.export_set)}" if args.export_set else ""))
    body = [
        "## Cheap fitness: what the export scores (`scripts/bench_cost.py`)",
        "",
        machine(load0, t0),
        f"- command: `{command}`",
        (f"- the config {'with --export-set' if args.export_set else 'as written'} (scoring.fidelity "
         f"{results[0]['fidelity']}), searched to "
         f"{args.export_evals} candidates in {results[0]['search_s']:.0f} s, then exported twice from copies of its "
         "folder: 5 finalists re-scored on held-out and the calibration pick; items and tokens of every baseline, "
         "held-out and completion record the export wrote"),
        "",
        *export_table(results),
    ]
    publish(args.out, "bench_cost_export", "\n".join(body), write=not args.no_write)


if __name__ == "__main__":
    main()
