"""The family's search config (configs/smollm2.yaml is the same with relative paths and comments)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.zoo.smol.data import SKILLS
from evomerge.zoo.smol.train import THREADS

# The export's RegMean and Fisher baselines take their statistics from this many calibration texts (a third of the
# full family's): Fisher's backward pass per text and expert was half of an export on all 384.
STATISTICS_TEXTS = 128


def search_config(root: Path, seed: int) -> dict[str, Any]:
    """A search over per-layer-group task-arithmetic weights of the experts (see configs/smollm2.yaml)."""
    return {
        "name": "smollm2",
        "seed": seed,
        "sources": {"base": str(root / "models" / "base"), "models": [str(root / "models" / s) for s in SKILLS]},
        "genome": {"methods": ["task_arithmetic"], "layer_granularity": 10, "bounds": {"weight": [0.0, 1.0]},
                   "parameters": {"lambda": 1.0}},
        "scoring": {"task_path": str(root / "tasks"), "batch_size": 32, "fidelity": "racing", "chunk_items": 32,
                    "racing_z": 1.0, "statistics_texts": STATISTICS_TEXTS},
        "objectives": [{"task": f"smol_{s}", "heldout_task": f"smol_{s}_heldout", "metric": "acc"} for s in SKILLS],
        "strategy": {"name": "cmaes"},
        "budget": {"max_evals": 100},
        "execution": {"backend": "ray", "workers": 2, "in_flight": 4, "device": "cpu", "threads": THREADS},
    }
