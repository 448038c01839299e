#!/usr/bin/env python
"""Cheap fitness: held-out gain over the best fixed recipe against calibration items scored, full vs racing.

    .venv/bin/python scripts/bench_cost.py [--config configs/zoo.yaml] [--zoo DIR] [--evals 300] [--seeds 3]
        [--strategies cmaes nsga2] [--z 1.5] [--chunk-items 64] [--work DIR] [--no-write]

Each strategy × search seed runs twice on the same config: ``scoring.fidelity: full`` and ``racing`` (the
chunk size and z given). A run is ``scripts/bench_search.py``'s: searched to ``--evals`` candidates, its
calibration pick (chosen without held-out data; with racing the front is completed on every calibration
item first) scored on held-out against the run's best fixed recipe on held-out. The cost column counts the
calibration items the search scored (read from the run log: a raced candidate's ``items``), against
what full scoring scores; wall time is the search's. The issue's target (issue 20): racing reaches the
full run's held-out gain within 0.01 with at most 1/4 of its scored items, in every seed.

Reduced runs (``--evals``, ``--seeds``, ``--strategies``) are for a shared machine; the table says which
command produced it. Writes the section ``bench_cost`` of docs/BENCHMARKS.md (unless ``--no-write``) and
the plot ``docs/bench_cost.png``.
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
    from evomerge.run.racing import items_scored

    settings = [f"scoring.fidelity={fidelity}"]  # a full run's config leaves the racing knobs alone: reused across them
    if fidelity == "racing":
        settings += [f"scoring.chunk_items={args.chunk_items}", f"scoring.racing_z={args.z}"]
    folder = work / fidelity
    result = one_run(strategy, "acc", seed, args.config, args.zoo, settings, [args.evals], str(folder))
    counted = items_scored(RunLog.open(folder / f"{strategy}-acc-s{seed}").candidates()[:args.evals])
    assert counted is not None
    result.update(fidelity=fidelity, items=counted[0], full_items=counted[1],
                  gain=result["at"][args.evals]["heldout"] - result["best_fixed"]["heldout"])
    return result


def table(results: list[dict]) -> list[str]:
    lines = ["| strategy | seed | fidelity | items scored | of full | search s | held-out pick | best fixed | gain |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['strategy']} | {r['seed']} | {r['fidelity']} | {r['items']:,} | {r['items'] / r['full_items']:.2f} | "
                     f"{r['search_s']:.0f} | {r['at'][max(r['at'])]['heldout']:.3f} | {r['best_fixed']['heldout']:.3f} | "
                     f"{r['gain']:+.3f} |")
    return lines


def verdicts(results: list[dict]) -> list[str]:
    """Per strategy and seed: does racing meet the issue's target against the full run?"""
    lines = []
    for full in (r for r in results if r["fidelity"] == "full"):
        race = next(r for r in results if r["fidelity"] == "racing" and (r["strategy"], r["seed"]) == (full["strategy"], full["seed"]))
        fraction, gap = race["items"] / full["items"], full["gain"] - race["gain"]
        met = fraction <= TARGET_FRACTION and gap <= TARGET_GAIN_GAP
        lines.append(f"- {full['strategy']} seed {full['seed']}: racing scored {fraction:.2f} of the full run's items, "
                     f"gain {race['gain']:+.3f} vs {full['gain']:+.3f} — target {'**met**' if met else '**missed**'}")
    return lines


def plot(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=110, layout="constrained")
    ax = fig.subplots()
    for k, strategy in enumerate(dict.fromkeys(r["strategy"] for r in results)):
        for fidelity, marker in (("full", "o"), ("racing", "^")):
            rs = [r for r in results if r["strategy"] == strategy and r["fidelity"] == fidelity]
            ax.scatter([r["items"] for r in rs], [r["gain"] for r in rs], marker=marker, color=f"C{k}", label=f"{strategy} / {fidelity}")
    ax.axhline(0, color="black", linewidth=1)
    ax.set(xlabel="calibration items scored by the search", ylabel="held-out gain over the best fixed recipe")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "zoo.yaml"))
    ap.add_argument("--zoo", help="run the config on this zoo build instead of the one it names")
    ap.add_argument("--evals", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=3, help="search seeds 0 .. N-1")
    ap.add_argument("--strategies", nargs="+", default=["cmaes", "nsga2"])
    ap.add_argument("--z", type=float, default=1.5)
    ap.add_argument("--chunk-items", type=int, default=64)
    ap.add_argument("--work", help="keep the run folders here (default: a temporary folder, removed)")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the section, leave docs/ alone")
    args = ap.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="evm-bench-cost-"))
    load0, t0 = os.getloadavg(), time.perf_counter()
    try:
        results = [cost_run(s, seed, fidelity, args, work) for s in args.strategies for seed in range(args.seeds)
                   for fidelity in ("full", "racing")]
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    command = (f".venv/bin/python scripts/bench_cost.py --config {shown(args.config)}" + (f" --zoo {shown(args.zoo)}" if args.zoo else "")
               + f" --evals {args.evals} --seeds {args.seeds} --strategies {' '.join(args.strategies)} --z {args.z:g}"
               f" --chunk-items {args.chunk_items}")
    body = [
        "## Cheap fitness: racing against full scoring (`scripts/bench_cost.py`)",
        "",
        (f"- date: {dt.date.today().isoformat()}; machine: {os.cpu_count()} cores, {cpu_model()}; load average (1 min) "
         f"before / after: {load0[0]:.2f} / {os.getloadavg()[0]:.2f}; wall time {(time.perf_counter() - t0) / 60:.0f} min"),
        f"- command: `{command}`",
        ("- cost is counted in calibration items scored by the search (tokens are not counted yet); the export's "
         "completion of the front and the baselines are not in it"),
        "",
        *table(results),
        "",
        *verdicts(results),
        "",
        "![gain against items scored](bench_cost.png)",
    ]
    if not args.no_write:
        plot(results, REPO / "docs" / "bench_cost.png")
    publish(args.out, "bench_cost", "\n".join(body), write=not args.no_write)


if __name__ == "__main__":
    main()
