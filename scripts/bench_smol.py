"""The SmolLM2 family's table: experts, fixed recipes, ceiling and conditions, for family seeds 0 and 1.

    .venv/bin/python scripts/bench_smol.py [--root zoo/smol-bench] [--seeds 0 1] [--no-write]

Builds each family as ``evomerge zoo smol ROOT/seedN --seed N --check-room`` does (a family already built
there is reused, its build seconds and load those recorded when it was built; one already checked keeps its
recorded (b) and (c)), and writes one table into docs/BENCHMARKS.md (section ``bench_smol``). The room check
is over an hour of CPU per family on 2 cores: ROOT/seedN may be a link to a family checked before.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path

from benchdoc import REPO, cpu_model, publish, shown  # noqa: E402 (first: sets the offline environment)

from bench_zoo import quality_cells, table


def row(folder: Path, seed: int) -> str:
    from evomerge.zoo.smol.build import build_smol

    q = build_smol(folder, seed=seed, check_room=True, progress=True).quality
    manifest = json.loads((folder / "smol.json").read_text())
    skills = list(q["table"]["base"])
    own = "/".join(f"{q['table'][s][s]:.2f}" for s in skills)  # the table's rows: "base" and each skill's expert
    base = "/".join(f"{q['table']['base'][s]:.2f}" for s in skills)
    return f"| {seed} | {own} | {base} | " + " | ".join(quality_cells(q, manifest)) + " |"


def main() -> None:
    import torch

    from evomerge.zoo.ceiling import WEIGHT_BOUNDS
    from evomerge.zoo.smol.build import VARIANTS
    from evomerge.zoo.smol.check import CONDITIONS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "zoo" / "smol-bench",
                        help="folder of the families, one seedN each (default zoo/smol-bench)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the file alone")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = [row(args.root / f"seed{seed}", seed) for seed in args.seeds]
    full = VARIANTS["full"]
    plan = full.check
    grid = f"λ {min(plan.lambdas):g}…{max(plan.lambdas):g} and d ∈ {{{', '.join(f'{d:g}' for d in plan.densities)}}}"
    body = "\n".join([
        "## The SmolLM2 family: experts, fixed recipes, ceiling (`scripts/bench_smol.py`)",
        "",
        f"- date: {datetime.date.today()}; machine: {os.cpu_count()} cores, {cpu_model()}; Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average (1 min) before / after: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f} (other processes share the cores)",
        f"- command: `.venv/bin/python scripts/bench_smol.py --root {shown(args.root)} --seeds "
        f"{' '.join(map(str, args.seeds))}`; each family: `evomerge zoo smol DIR --seed N --check-room`",
        f"- accuracies on held-out ({full.heldout} items per skill), skills add/rev/caps; fixed recipes: mean "
        "normalized accuracy on held-out (per skill ÷ the best expert's, averaged), each family's member chosen on "
        f"calibration ({full.calibration} items per skill) from {grid} (`evomerge.zoo.check`: the reports' fixed "
        "recipes and rule, without the calibrated RegMean and Fisher and the greedy soup, which the search's report "
        "adds)",
        f"- ceiling: CMA-ES over task-arithmetic weights per expert and group of {plan.ceiling_granularity} layers in "
        f"[{WEIGHT_BOUNDS[0]:g}, {WEIGHT_BOUNDS[1]:g}], scored on held-out itself ({plan.ceiling_evaluations} "
        "evaluations, from the best TA recipe): a bound for verification, not a result",
        "- conditions: " + "; ".join(CONDITIONS.values()),
        "- build: seconds as recorded by the build (1-minute load average at its end)",
        "",
        *table(["seed", "experts (own skill)", "base"], rows),
    ])
    publish(args.out, "bench_smol", body, write=not args.no_write)


if __name__ == "__main__":
    main()
