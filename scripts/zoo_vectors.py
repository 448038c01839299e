"""Why a zoo's fixed merges fall short: its task vectors' norms and cosines, and each one alone at a few scales.

    .venv/bin/python scripts/zoo_vectors.py zoo/seed0-llama [--split calibration]

Prints, as markdown, ‖τ‖ per expert, the cosines between task vectors, and for each expert the
accuracy on every skill of base + λ·τ (λ 0.2 … 1.0) on the chosen split: where an expert's skill
appears as its vector grows, and what it does to the other skills on the way (docs/ZOO.md).
"""

from __future__ import annotations

import argparse
import json
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

    return {s: float(torch.sqrt(sum((t.double() ** 2).sum() for t in tau.values()))) for s, tau in task_vectors(zoo).items()}


def main() -> None:
    import torch
    from safetensors.torch import load_file

    from evomerge.errors import EvomergeError
    from evomerge.zoo import load_zoo
    from evomerge.zoo.check import Scorer
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
    items = {s: [json.loads(line) for line in getattr(f, args.split).read_text().splitlines()] for s, f in zoo.skills.items()}
    base = load_file(zoo.base / "model.safetensors")
    skills = list(zoo.experts)
    print(f"\nbase + λ·τ alone, accuracy on {args.split} ({'/'.join(skills)})\n")
    print("| τ of | " + " | ".join(f"λ = {lam:g}" for lam in SCALES) + " |\n|---|" + "---|" * len(SCALES))
    with fixed_threads():
        scorer = Scorer(zoo.base, items)
        for s, vector in tau.items():
            cells = []
            for lam in SCALES:
                acc = scorer({n: base[n] + lam * vector[n] for n in base})
                cells.append(" / ".join(f"{acc[k]:.2f}" for k in skills))
            print(f"| {s} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
