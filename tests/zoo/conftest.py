"""The default zoo (seed 0, llama), built once into the repo's gitignored zoo/ folder and cached there,
so the tests, the demo and the benchmarks share it."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEFAULT_ZOO = REPO / "zoo" / "seed0-llama"


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    from evomerge.zoo import build_zoo

    return build_zoo(DEFAULT_ZOO, seed=0, arch="llama", progress=False).root
