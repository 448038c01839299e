"""Condition (c) of a zoo: does a per-layer search have room beyond the best fixed recipe?

    .venv/bin/python scripts/zoo_ceiling.py zoo/seed0-llama [--evaluations 240] [--seed 0]

Searches per-layer × per-expert task-arithmetic weights in [0, 2] with the cmaes strategy, from the zoo's
best fixed task-arithmetic recipe, merged and scored as a run's candidates are, on the held-out tasks themselves
(``evomerge.zoo.ceiling``: a ceiling for verification, not a result). Records it under
``quality.ceiling`` in the zoo's zoo.json, with the conditions judged again, and exits 1 naming
condition (c) when the ceiling is short of best fixed + 0.12 (2 on a bad argument). Deterministic:
the same zoo, evaluations and seed give the same ceiling.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchdoc import fail  # noqa: E402 (first: sets the offline environment)

EVALUATIONS = 240  # ~20 CMA-ES generations of 13 over 24 weights: minutes on one core


def ceiling(zoo_dir: Path, evaluations: int = EVALUATIONS, seed: int = 0, progress: bool = True):  # -> Zoo
    """Search the ceiling of the zoo in ``zoo_dir`` and record it in its zoo.json; returns the zoo.

    The search runs where the zoo was built: in a child process whose math libraries compute alike on
    every AVX2 CPU (``evomerge.env.run_reproducibly``), one thread, so the ceiling is the same everywhere.
    """
    from evomerge.env import run_reproducibly
    from evomerge.zoo.build import load_zoo, record_ceiling

    return record_ceiling(load_zoo(zoo_dir).root, run_reproducibly(search, zoo_dir, evaluations, seed, progress))


def search(zoo_dir: Path, evaluations: int, seed: int, progress: bool) -> dict:
    """The ceiling search on the zoo's held-out items, from its best fixed task-arithmetic recipe."""
    from evomerge.zoo.build import load_zoo
    from evomerge.zoo.ceiling import search_ceiling
    from evomerge.zoo.train import fixed_threads

    zoo = load_zoo(zoo_dir)
    start = zoo.quality["fixed"]["task_arithmetic"]["params"]["lam"]
    with fixed_threads():
        return search_ceiling(zoo.family(), start, evaluations, seed, log=print if progress else lambda line: None)


def main(argv: list[str] | None = None) -> int:
    from evomerge.errors import EvomergeError
    from evomerge.zoo.check import CONDITIONS, verdict_line

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoo_dir", type=Path, help="a built zoo (evomerge zoo build DIR)")
    parser.add_argument("--evaluations", type=int, default=EVALUATIONS,
                        help="candidates to score (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="CMA-ES seed (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.evaluations < 1:
        fail(f"--evaluations must be at least 1, got {args.evaluations}")
    try:
        zoo = ceiling(args.zoo_dir, args.evaluations, args.seed, progress=not args.quiet)
    except EvomergeError as e:
        fail(str(e))
    for name, verdict in zoo.quality["conditions"].items():
        print(verdict_line(name, verdict["holds"], verdict["evidence"]))
    if not zoo.quality["conditions"][CONDITIONS["c"]]["holds"]:
        print(f"error: {zoo.root} misses condition {CONDITIONS['c']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
