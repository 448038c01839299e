"""The zoo table: zoos for seeds 0-4 (llama) and seed 0 (gpt2), their fixed recipes, ceilings and conditions.

    .venv/bin/python scripts/bench_zoo.py [--root zoo/bench] [--evaluations 240] [--no-write]

Builds each zoo under ROOT (one at a time; a zoo already built there is reused, with the build seconds
and load recorded when it was built: delete it to measure again), runs ``scripts/zoo_ceiling.py``'s
search on each llama zoo that has no ceiling of this budget yet (condition (c) is asked of llama only),
and writes one table into docs/BENCHMARKS.md (section ``bench_zoo``). A zoo whose build misses (a) or
(b) appears as a row that names the condition.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any

from benchdoc import REPO, cpu_model, fail, publish, shown  # noqa: E402 (first: sets the offline environment)

from zoo_ceiling import EVALUATIONS, ceiling
from zoo_vectors import norms

ZOOS = [("llama", seed) for seed in range(5)] + [("gpt2", 0)]
# the table's fixed recipe columns: a family a manifest lacks (TSV-M, in one written before it) shows "–"
SHORT = {"soup": "soup", "tsvm": "TSV-M", "task_arithmetic": "TA", "ties": "TIES", "dare_ties": "DARE-TIES"}


def build(root: Path, arch: str, seed: int, evaluations: int) -> dict[str, Any] | str:
    """The zoo's manifest quality (with a ceiling for llama), or the build's error message."""
    from evomerge.errors import EvomergeError
    from evomerge.zoo import build_zoo

    folder = root / f"seed{seed}-{arch}"
    try:
        zoo = build_zoo(folder, seed=seed, arch=arch)
    except EvomergeError as e:
        return str(e)
    recorded = zoo.quality.get("ceiling", {})
    if arch == "llama" and (recorded.get("evaluations"), recorded.get("seed")) != (evaluations, 0):
        zoo = ceiling(folder, evaluations, seed=0, progress=False)
    return zoo.quality


def row(arch: str, seed: int, folder: Path, q: dict[str, Any] | str) -> str:
    from evomerge.zoo import load_zoo
    from evomerge.zoo.check import own_scores

    if isinstance(q, str):
        return f"| {arch} {seed} | build failed: {q} |" + " |" * 9
    manifest = json.loads((folder / "zoo.json").read_text())
    skills = list(q["table"]["base"])
    own = "/".join(f"{v:.2f}" for v in own_scores(q["table"]).values())
    base = "/".join(f"{q['table']['base'][s]:.2f}" for s in skills)
    size = "/".join(f"{n:.0f}" for n in norms(load_zoo(folder)).values())
    return f"| {arch} {seed} | {own} | {base} | {size} | " + " | ".join(quality_cells(q, manifest)) + " |"


def table(first: list[str], rows: list[str]) -> list[str]:
    """A family table's lines: header (``first`` columns, then those of ``quality_cells``) and ``rows``."""
    columns = [*first, *SHORT.values(), "ceiling", "a b c", "build s (load)"]
    align = ["---"] * len(first) + ["---:"] * (len(SHORT) + 1) + ["---", "---:"]
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|", *rows]


def fixed_cell(fixed: dict[str, Any] | None) -> str:
    """A fixed recipe family's held-out score and its chosen member's setting ("0.435 (0.2)"); "–" if not scored."""
    if fixed is None:
        return "–"
    setting = fixed["name"].partition("@")[2]
    return f"{fixed['heldout']:.3f}" + (f" ({setting})" if setting else "")


def quality_cells(q: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """A family's table cells after its models: each fixed recipe family's held-out score (its member's setting),
    the ceiling, the conditions' verdicts, and the build's seconds (load)."""
    fixed = [fixed_cell(q["fixed"].get(family)) for family in SHORT]
    ceiling_value = f"{q['ceiling']['heldout']:.3f}" if "ceiling" in q else "–"
    verdicts = ["✓" if v["holds"] else "✗" if v["holds"] is False else "–" for v in q["conditions"].values()]
    load = manifest["build_load_average"][0]
    return [*fixed, ceiling_value, " ".join(verdicts), f"{manifest['build_seconds']:.0f} ({load:.1f})"]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=REPO / "zoo" / "bench",
                        help="folder of the zoos (default zoo/bench)")
    parser.add_argument("--evaluations", type=int, default=EVALUATIONS, help="ceiling budget (default %(default)s)")
    parser.add_argument("--out", default=str(REPO / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the file alone")
    args = parser.parse_args()
    if args.evaluations < 1:
        fail(f"--evaluations must be at least 1, got {args.evaluations}")
    load_before = os.getloadavg()[0]
    rows = []
    for arch, seed in ZOOS:
        print(f"zoo {arch} seed {seed}", flush=True)
        rows.append(row(arch, seed, args.root / f"seed{seed}-{arch}", build(args.root, arch, seed, args.evaluations)))
    body = "\n".join([
        "## The zoo: experts, fixed recipes, ceiling (`scripts/bench_zoo.py`)",
        "",
        f"- date: {datetime.date.today()}; machine: {os.cpu_count()} cores, {cpu_model()}; Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average (1 min) before / after: "
        f"{load_before:.2f} / {os.getloadavg()[0]:.2f} (other processes share the cores)",
        f"- command: `.venv/bin/python scripts/bench_zoo.py --root {shown(args.root)} --evaluations "
        f"{args.evaluations}`; each zoo: `evomerge zoo build DIR --seed N --arch A`, then for llama "
        "`scripts/zoo_ceiling.py DIR`",
        "- accuracies on held-out (512 items per skill), skills rev/sort/up/dup (rev, sort drifting; up, dup "
        "anchored); ‖τ‖: norm of each expert's task vector (`scripts/zoo_vectors.py`); fixed recipes: mean normalized "
        "accuracy on held-out (per skill ÷ the best expert's, averaged), each family's member chosen on calibration "
        "(256 items per skill) from λ 0.1…1.5 and d ∈ {0.3, 0.5, 0.7} (`evomerge.zoo.check`: the reports' fixed "
        "recipes and rule)",
        f"- ceiling: CMA-ES over per-layer × per-expert task-arithmetic weights in [0, 2] scored on held-out itself "
        f"(budget {args.evaluations} evaluations, seed 0, from the best TA recipe): a bound for verification, "
        "asked of llama zoos only",
        "- conditions: (a) each expert ≥ 0.95 on its skill, base ≥ 0.40 below; (b) best fixed ≤ 0.85; "
        "(c) ceiling ≥ best fixed + 0.12 (– not judged)",
        "- build: seconds as recorded by the build (1-minute load average at its end)",
        "",
        *table(["zoo", "experts (own skill)", "base", "‖τ‖"], rows),
    ])
    publish(args.out, "bench_zoo", body, write=not args.no_write)


if __name__ == "__main__":
    main()
