"""Differential test on exports: mergekit-yaml on an exported mergekit.yaml gives the exported tensors.

The genome has genes per layer and per parameter kind; the YAML names the models by folder name
(nothing configured), so mergekit runs in the folder that holds them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.config.search import GenomeConfig
from evomerge.export.export import export_candidate

from .conftest import export_config, synthetic_run


@pytest.mark.slow
@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_mergekit_rebuilds_an_exported_per_layer_per_kind_genome(method: str, scored_family, fake_executor, mergekit,
                                                                  tmp_path: Path) -> None:
    cfg = export_config(scored_family, genome=GenomeConfig(methods=(method,), split_by_kind=True))
    run = synthetic_run(tmp_path / "run", cfg, n=6)
    out = tmp_path / "model"
    export_candidate(run.root, out, executor_factory=fake_executor, quiet=True)
    assert ".self_attn." in (out / "mergekit.yaml").read_text()  # kinds have values of their own
    mergekit.run(out / "mergekit.yaml", tmp_path / "mk", cwd=scored_family["base"].parent)
    mergekit.assert_same_tensors(out, tmp_path / "mk", method)
