"""Differential test: the same mergekit YAML through mergekit-yaml and through `evomerge merge`.

mergekit is a dev-only dependency and the oracle here. Tensors must agree within 1e-5 relative
error (L2 norm of the difference over the norm of mergekit's tensor), tensor by tensor, in float32.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.cli import main

MERGEKIT = shutil.which("mergekit-yaml") or str(Path(os.sys.executable).parent / "mergekit-yaml")


def recipes(base: Path, a: Path, b: Path, c: Path) -> dict[str, dict]:
    m = lambda p, **params: {"model": str(p), **({"parameters": params} if params else {})}  # noqa: E731
    return {
        "linear": {"merge_method": "linear", "models": [m(a, weight=0.6), m(b, weight=0.3), m(c, weight=0.1)]},
        "task_arithmetic": {"merge_method": "task_arithmetic", "base_model": str(base),
                            "models": [m(a, weight=0.7), m(b, weight=0.5), m(c, weight=-0.2)], "parameters": {"lambda": 0.9}},
        "ties": {"merge_method": "ties", "base_model": str(base),
                 "models": [m(a, weight=1.0, density=0.5), m(b, weight=0.8, density=0.6), m(c, weight=0.5, density=0.3)]},
        "slerp": {"merge_method": "slerp", "base_model": str(base), "models": [m(base), m(a)], "parameters": {"t": 0.35}},
        "model_stock": {"merge_method": "model_stock", "base_model": str(base), "models": [m(a), m(b), m(c)]},
    }


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def differential(family: dict[str, Path], method: str, tmp_path: Path) -> None:
    recipe = {**recipes(family["base"], family["a"], family["b"], family["c"])[method], "dtype": "float32"}
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([MERGEKIT, str(path), str(tmp_path / "mk"), "--no-write-model-card", "--lazy-unpickle"],
                   check=True, env=env, capture_output=True)
    assert main(["merge", str(path), "--out", str(tmp_path / "em")]) == 0
    ours, theirs = load_folder(tmp_path / "em"), load_folder(tmp_path / "mk")
    assert set(theirs) <= set(ours)
    for name, want in theirs.items():
        got = ours[name].double()
        err = float((got - want.double()).norm() / want.double().norm().clamp(min=1e-12))
        assert err <= 1e-5, f"{method}: {name} differs from mergekit by {err:.2e} (relative L2)"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "slerp", "model_stock"])
def test_evomerge_matches_mergekit_on_tiny_models(method: str, tiny_family, tmp_path: Path) -> None:
    differential(tiny_family, method, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "slerp", "model_stock"])
def test_evomerge_matches_mergekit_on_zoo_models(method: str, zoo_dir: Path, tmp_path: Path) -> None:
    models = zoo_dir / "models"
    differential({"base": models / "base", "a": models / "rev", "b": models / "sort", "c": models / "up"}, method, tmp_path)
