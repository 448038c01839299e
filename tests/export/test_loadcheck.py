"""The load check: export proves its folder loads and generates with transformers, or writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from evomerge.errors import EvomergeError
from evomerge.export.export import export_candidate
from evomerge.export.loadcheck import check_loads
from evomerge.run.log import RunLog

from .conftest import export_config, synthetic_run


def test_a_folder_with_weights_config_and_tokenizer_passes(scored_family) -> None:
    check_loads(scored_family["base"])


def test_a_folder_without_a_tokenizer_fails_in_one_line(tiny_family) -> None:
    with pytest.raises(EvomergeError, match="failed its load check") as e:
        check_loads(tiny_family["base"])
    assert "\n" not in str(e.value)


def test_non_finite_weights_fail(scored_family, tmp_path: Path) -> None:
    folder = shutil.copytree(scored_family["base"], tmp_path / "m")
    tensors = load_file(folder / "model.safetensors")
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(EvomergeError, match="logits are not finite"):
        check_loads(folder)


def test_an_export_that_fails_its_load_check_leaves_nothing(tiny_family, fake_executor, tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", export_config(tiny_family), n=6)  # models without a tokenizer
    with pytest.raises(EvomergeError, match="failed its load check.*nothing was written"):
        export_candidate(run.root, tmp_path / "out" / "model", executor_factory=fake_executor, quiet=True)
    assert list((tmp_path / "out").iterdir()) == []  # neither the folder nor its temporary sibling
    assert RunLog.open(run.root).exports() == []
