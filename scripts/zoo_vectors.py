"""Why a zoo's fixed merges fall short: its task vectors' norms and cosines, and each one alone at a few scales.

    .venv/bin/python scripts/zoo_vectors.py zoo/seed0-llama [--split calibration]

Prints, as markdown, ‖τ‖ per expert, the cosines between task vectors, and for each expert the
accuracy on every skill of base + λ·τ (λ 0.2 … 1.0) on the chosen split: where an expert's skill
appears as its vector grows, and what it does to the other skills on the way (docs/ZOO.md).
"""

from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path

from benchdoc import fail  # noqa: E402 (first: sets the offline environment)

SCALES = (0.2, 0.4, 0.6, 0.8, 1.0)


def task_vectors(zoo):  # -> dict[str, dict[str, Tensor]]
    from safetensors.torch import load_file

    base = load_file(zoo.base / "model.safetensors")
    return {s: {n: t - base[n] for n, t in load_file(d / "model.safetensors").items()} for s, d in zoo.experts.items()}


def norms(zoo) -> dict[str, float]:
    """‖τ‖ (all tensors flattened together) per expert."""
    import torch

    return {s: float(torch.sqrt(sum((t.double() ** 2).sum() for t in tau.values())))
            for s, tau in task_vectors(zoo).items()}


def main() -> None:
    import torch

    from evomerge.errors import EvomergeError
    from evomerge.recipes.recipe import GroupSpec, Recipe
    from evomerge.zoo import load_zoo
    from evomerge.zoo.check import FamilyScorer
    from evomerge.zoo.train import fixed_threads

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoo_dir", type=Path)
    parser.add_argument("--split", choices=("calibration", "heldout"), default="calibration")
    args = parser.parse_args()
    try:
        zoo = load_zoo(args.zoo_dir)
    except EvomergeError as e:
        fail(str(e))
    tau = task_vectors(zoo)
    flat = {s: torch.cat([t.flatten() for t in v.values()]).double() for s, v in tau.items()}
    print("| expert | ‖τ‖ |\n|---|---:|")
    print("\n".join(f"| {s} | {n:.2f} |" for s, n in norms(zoo).items()))
    print("\n| pair | cos(τ_a, τ_b) |\n|---|---:|")
    print("\n".join(f"| {a}, {b} | {float(torch.nn.functional.cosine_similarity(flat[a], flat[b], 0)):+.3f} |"
                    for a, b in combinations(flat, 2)))
    family = zoo.family()
    print(f"\nbase + λ·τ alone (task arithmetic, one expert), accuracy on {args.split} ({'/'.join(family.skills)})\n")
    print("| τ of | " + " | ".join(f"λ = {lam:g}" for lam in SCALES) + " |\n|---|" + "---|" * len(SCALES))
    with fixed_threads():
        scorer = FamilyScorer(family)
        for i, s in enumerate(family.skills):
            onehot = tuple(1.0 if j == i else 0.0 for j in range(len(family.skills)))
            cells = []
            for lam in SCALES:
                spec = GroupSpec("task_arithmetic", {"weight": onehot}, {"lam": lam})
                acc, error = scorer.raw(Recipe(family.base, family.sources, spec), args.split)
                cells.append(" / ".join(f"{a:.2f}" for a in acc) if acc is not None else f"failed: {error}")
            print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
