"""Candidates per minute: in-process worker vs. Ray with 1 and 2 workers, on the zoo.

    .venv/bin/python scripts/bench_workers.py [--config configs/zoo.yaml] [--candidates 24] [--warmup 2]

Every executor evaluates the same candidates (points drawn from the config's genome space with a
fixed seed), after a warm-up, with the whole batch submitted at once so the executor alone sets the
pace. Worker start-up (loading sources, building lm-eval requests) is excluded: it happens once per
run. The rows take turns for several rounds and the table shows medians, so a burst of load from
other processes does not land on one row only. Utilization is compute time (merge + score, measured
inside the worker) / wall time of the batch, per worker. The table replaces this script's section of
docs/BENCHMARKS.md (between its markers), creating the file if needed.

Targets (issue 4): Ray with 1 worker within 15% of in-process; 2 workers >= 1.6x one worker on a
2-core machine; utilization >= 90%.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchdoc import REPO, cpu_model, shown, write_section, zoo_config  # noqa: E402 (first: sets the offline environment)

import torch  # noqa: E402

from evomerge.execution.executor import Executor, Job, LocalExecutor  # noqa: E402
from evomerge.execution.ray_executor import RayExecutor  # noqa: E402
from evomerge.execution.worker import WorkerSpec  # noqa: E402
from evomerge.genome.space import GenomeSpace  # noqa: E402


def run_batch(executor: Executor, jobs: list[Job]) -> tuple[float, list]:
    """Submit the whole batch at once (the executor alone sets the pace); wall time and results."""
    t0 = time.perf_counter()
    for job in jobs:
        executor.submit(job)
    results = [executor.next_result() for _ in jobs]
    return time.perf_counter() - t0, results


def batch_row(wall: float, results: list) -> dict:
    errors = [r.outcome.error for r in results if r.outcome.error]
    if errors:
        sys.exit(f"{len(errors)} candidates failed, e.g. {errors[0]}")
    busy: dict[str, float] = {}
    for r in results:
        busy[r.outcome.worker.split("@")[0]] = (busy.get(r.outcome.worker.split("@")[0], 0.0)
                                                + r.outcome.merge_s + r.outcome.score_s)
    return {
        "per_min": 60 * len(results) / wall,
        "per_cand": sum(r.outcome.merge_s + r.outcome.score_s for r in results) / len(results),
        "util": {w: b / wall for w, b in sorted(busy.items())},
        "scores": {r.job.index: r.outcome.scores for r in results},
    }


def machine() -> str:
    model = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU actors only)"
    return f"{os.cpu_count()} cores, {model}, {gpu}"




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "zoo.yaml"))
    ap.add_argument("--candidates", type=int, default=24, help="timed candidates per executor and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows medians")
    ap.add_argument("--warmup", type=int, default=2, help="untimed candidates per worker first")
    ap.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    args = ap.parse_args()

    import ray

    cfg = zoo_config(Path(args.config))
    spec = WorkerSpec.from_config(cfg)
    space = GenomeSpace.for_config(cfg)
    rng = random.Random(0)  # the same candidates for every executor
    points = [tuple(rng.random() for _ in range(space.dim)) for _ in range(args.candidates + 2 * args.warmup)]
    jobs = [Job(i, space.to_recipe(x)) for i, x in enumerate(points)]
    warmup, timed = jobs[: 2 * args.warmup], jobs[2 * args.warmup:]
    load0 = os.getloadavg()
    default_threads = torch.get_num_threads()  # before anything below changes it
    print(f"{len(timed)} candidates x {args.rounds} rounds, genome dim {space.dim}, {len(cfg.sources.models)} sources; "
          f"load average {load0[0]:.2f}", flush=True)

    # One local Ray for both Ray rows; 3 logical CPUs so the 1-worker and 2-worker executors can both
    # hold their actors (they never run at the same time: rows take turns, round by round).
    temp = tempfile.mkdtemp(prefix="evm-bench-", dir="/tmp")
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, _temp_dir=temp)
    try:
        executors: dict[str, Executor] = {
            "in-process": LocalExecutor(spec),
            "in-process, 1 thread": LocalExecutor(replace(spec, threads=1)),
            "Ray, 1 worker": RayExecutor(spec, workers=1),
            "Ray, 2 workers": RayExecutor(spec, workers=2),
        }
        for ex in executors.values():
            run_batch(ex, warmup[: args.warmup * ex.n_workers])
        rounds: dict[str, list[dict]] = {name: [] for name in executors}
        for r in range(args.rounds):
            for name, ex in executors.items():
                row = batch_row(*run_batch(ex, timed))
                rounds[name].append(row)
                print(f"round {r + 1}  {name:<22} {row['per_min']:7.1f} cand/min  {row['per_cand'] * 1000:6.0f} "
                      "ms/cand  util "
                      + " ".join(f"{w}={u:.0%}" for w, u in row["util"].items()), flush=True)
        utilization = {name: ex.utilization() for name, ex in executors.items()}
        for ex in executors.values():
            ex.close()
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    load1 = os.getloadavg()

    def median_row(name: str) -> dict:
        rows = rounds[name]
        return {
            "name": name, "workers": len(rows[0]["util"]), "per_min": statistics.median(r["per_min"] for r in rows),
            "all": [r["per_min"] for r in rows], "per_cand": statistics.median(r["per_cand"] for r in rows),
            "util": {w: statistics.median(r["util"][w] for r in rows) for w in rows[0]["util"]},
        }

    table = [median_row(name) for name in rounds]
    reference = rounds["in-process"][0]["scores"]
    same = all(r["scores"] == reference for rows in rounds.values() for r in rows)
    local, one, two = table[1], table[2], table[3]
    min_util = min(u for row in (one, two) for u in row["util"].values())
    checks = [
        ("Ray 1 worker within 15% of in-process (both 1 thread)", one["per_min"] >= 0.85 * local["per_min"],
         f"{one['per_min'] / local['per_min']:.2f}x"),
        ("Ray 2 workers >= 1.6x Ray 1 worker", two["per_min"] >= 1.6 * one["per_min"],
         f"{two['per_min'] / one['per_min']:.2f}x"),
        ("utilization >= 90% (Ray workers)", min_util >= 0.9, f"min {min_util:.0%}"),
    ]
    threads = f"{spec.threads} thread(s)" if spec.threads else f"torch's default, {default_threads} thread(s)"
    lines = [
        "## Workers: in-process vs. Ray (`scripts/bench_workers.py`)",
        "",
        f"- date: {dt.date.today().isoformat()}; machine: {machine()}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, ray {ray.__version__}",
        f"- command: `.venv/bin/python scripts/bench_workers.py --config {shown(args.config)} "
        f"--candidates {args.candidates} --rounds {args.rounds} --warmup {args.warmup}`",
        f"- workload: `{cfg.name}` config: {len(cfg.sources.models)} sources, {', '.join(cfg.genome.methods)}, genome "
        f"dim {space.dim}, {len(cfg.objectives)} calibration tasks, batch size {cfg.scoring.batch_size}; the same "
        f"{len(timed)} random candidates per row and round, submitted at once, after {args.warmup} warm-up candidates "
        f"per worker; worker start-up (loading sources, building requests) excluded",
        f"- rows take turns, round by round ({args.rounds} rounds); the table shows medians, the last column every "
        "round",
        f"- 'in-process' uses the config's threads ({threads}); Ray's CPU actors use 1 torch thread each",
        "- utilization: compute time inside the worker (merge + score) / wall time of the batch, per worker",
        f"- load average (1 min) before / after: {load0[0]:.2f} / {load1[0]:.2f} (other processes share the cores)",
        f"- same scores from every executor and round: {'yes' if same else 'NO'}",
        "",
        "| executor | workers | candidates/min | ms per candidate (in worker) | utilization per worker | "
        "candidates/min per round |",
        "|---|---:|---:|---:|---|---|",
        *(f"| {r['name']} | {r['workers']} | {r['per_min']:.1f} | {r['per_cand'] * 1000:.0f} | "
          + ", ".join(f"{w} {u:.0%}" for w, u in r["util"].items()) + " | " + ", ".join(f"{v:.0f}" for v in r["all"])
          + " |"
          for r in table),
        "",
        "| target | met | measured |",
        "|---|---|---|",
        *(f"| {name} | {'yes' if ok else 'no'} | {value} |" for name, ok, value in checks),
        "",
        "Whole-session utilization as `RayExecutor.utilization()` reports it to the run log (start-up excluded, "
        "idle time between rounds included): "
        + "; ".join(f"{name}: " + ", ".join(f"{w.split('@')[0]} {u:.0%}" for w, u in util.items())
                    for name, util in utilization.items() if name.startswith("Ray")),
    ]
    write_section(Path(args.out), "bench_workers", "\n".join(lines))
    print("\n".join(lines[-8:]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
