"""Export: the model folder, its recipes (rebuilding identical tensors), the card, and refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from evomerge.cli import main
from evomerge.config.search import GenomeConfig, SourcesConfig
from evomerge.errors import EvomergeError
from evomerge.execution.worker import Outcome
from evomerge.export.export import export_candidate
from evomerge.genome.space import GenomeSpace
from evomerge.run.log import RunLog
from evomerge.run.records import CandidateRecord
from evomerge.scoring.objectives import oriented

from .conftest import TASKS, export_config, fake_scores, synthetic_run


def tensors(folder: Path) -> dict:
    return load_file(folder / "model.safetensors")


def assert_identical(a: Path, b: Path) -> None:
    ta, tb = tensors(a), tensors(b)
    assert ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype and ta[name].equal(tb[name]), name


def test_exported_recipe_rebuilds_identical_tensors(tiny_run: RunLog, fake_executor, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = export_candidate(tiny_run.root, out, executor_factory=fake_executor, quiet=True)
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "README.md", "evomerge_recipe.yaml"} <= names
    recipe = yaml.safe_load((out / "evomerge_recipe.yaml").read_text())
    assert Path(recipe["base"]).is_absolute() and all(Path(s["model"]).is_absolute() for s in recipe["sources"])
    assert main(["merge", str(out / "evomerge_recipe.yaml"), "--out", str(tmp_path / "rebuilt")]) == 0
    assert_identical(out, tmp_path / "rebuilt")
    assert result.mergekit and "mergekit.yaml" in names  # a per-layer genome too (tests/export/test_export_mergekit.py)
    assert RunLog.open(tiny_run.root).exports()[-1].index == result.record.index


def test_a_uniform_recipe_gets_a_mergekit_yaml_that_rebuilds_it(tmp_path: Path, scored_family, fake_executor) -> None:
    f = scored_family  # named by their absolute paths, as a user may ask, so that evomerge finds them from anywhere
    sources = SourcesConfig(f["base"], (f["a"], f["b"]), base_name=str(f["base"]), names=(str(f["a"]), str(f["b"])))
    cfg = export_config(f, sources=sources, genome=GenomeConfig(methods=("ties",)))
    run = synthetic_run(tmp_path / "run", cfg, n=3)
    space = GenomeSpace.for_config(cfg)
    x = space.encode(weight=[0.8, 1.2], density=[0.5, 0.7])  # the same genes in every layer group
    scores = fake_scores(space.to_recipe(x), TASKS)
    run.append(CandidateRecord(3, space.key(x), x, (), "seed", 1, scores, None, oriented(cfg.objectives, scores)))
    out = tmp_path / "model"
    assert export_candidate(run.root, out, pick=3, executor_factory=fake_executor, quiet=True).mergekit
    mk = yaml.safe_load((out / "mergekit.yaml").read_text())
    assert mk["merge_method"] == "ties" and mk["base_model"] == str(cfg.sources.base)
    assert [m["parameters"]["weight"] for m in mk["models"]] == pytest.approx([0.8, 1.2])
    assert main(["merge", str(out / "mergekit.yaml"), "--out", str(tmp_path / "rebuilt")]) == 0
    assert_identical(out, tmp_path / "rebuilt")


def test_a_second_export_scores_nothing_new(tiny_run: RunLog, fake_executor, tmp_path: Path) -> None:
    first = export_candidate(tiny_run.root, tmp_path / "m1", executor_factory=fake_executor, quiet=True)
    assert first.evaluated > 0
    n_records = len(RunLog.open(tiny_run.root).records)
    second = export_candidate(tiny_run.root, tmp_path / "m2", executor_factory=fake_executor, quiet=True)
    assert second.evaluated == 0 and second.record.index == first.record.index
    assert len(RunLog.open(tiny_run.root).records) == n_records + 1  # only the second export's own record


def test_card_lists_fingerprints_genome_scores_and_baselines(tiny_run: RunLog, fake_executor, tmp_path: Path) -> None:
    export_candidate(tiny_run.root, tmp_path / "model", executor_factory=fake_executor, quiet=True)
    card = (tmp_path / "model" / "README.md").read_text()
    for path, sha in tiny_run.meta.sources.items():
        assert f"| `{Path(path).name}` | `{sha}` |" in card
    for label in ("base", "a alone", "b alone", "uniform soup", "task arithmetic (λ=", "TIES (d=", "DARE-TIES (d="):
        assert f"| {label}" in card
    assert "| layers.0 |" in card and "weight · a" in card  # the genome, one row per group
    assert "t0_heldout" in card and "mean norm. (held-out)" in card
    assert "evomerge merge evomerge_recipe.yaml --out MODEL_DIR" in card
    assert "--pick " in card  # the export command that rebuilds this folder


def test_user_errors_are_one_liners(tiny_run: RunLog, fake_executor, tmp_path: Path, capsys) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("keep me")
    with pytest.raises(EvomergeError, match="not empty"):
        export_candidate(tiny_run.root, full, executor_factory=fake_executor, quiet=True)
    assert (full / "x").read_text() == "keep me"
    assert main(["export", str(tiny_run.root), "--out", str(tmp_path / "m"), "--pick", "99", "--quiet"]) == 2
    assert main(["export", str(tiny_run.root), "--out", str(tmp_path / "m"), "--pick", "best", "--quiet"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "--pick must be" in errors[1] and "Traceback" not in "".join(errors)
    assert not (tmp_path / "m").exists()


def test_changed_source_files_are_refused_before_anything_is_scored(tmp_path: Path, tiny_family, fake_executor) -> None:
    import shutil

    family = {k: shutil.copytree(v, tmp_path / k) for k, v in tiny_family.items() if k in ("base", "a", "b")}
    run = synthetic_run(tmp_path / "run", export_config(family), n=3)
    shutil.copy(tiny_family["c"] / "model.safetensors", family["b"] / "model.safetensors")
    with pytest.raises(EvomergeError, match="changed since the run scored it"):
        export_candidate(run.root, tmp_path / "model", executor_factory=fake_executor, quiet=True)
    assert not fake_executor.jobs and not (tmp_path / "model").exists()


def test_a_machine_failure_stops_the_export_and_logs_no_baseline_for_it(tiny_run: RunLog, fake_executor,
                                                                        tmp_path: Path) -> None:
    class DiskFull(fake_executor):  # type: ignore[misc,valid-type]
        def next_result(self):  # the third baseline finds the disk full
            result = super().next_result()
            if len(fake_executor.jobs) < 3:
                return result
            return type(result)(result.job, Outcome(None, error="OSError: [Errno 28] No space left on device",
                                                    worker="fake", machine=True))

    with pytest.raises(EvomergeError, match="No space left on device .* nothing was logged for it"):
        export_candidate(tiny_run.root, tmp_path / "out", executor_factory=DiskFull, quiet=True)
    assert not any(r.error for r in RunLog.open(tiny_run.root).baselines()) and not (tmp_path / "out").exists()
    export_candidate(tiny_run.root, tmp_path / "out", executor_factory=fake_executor, quiet=True)
    assert all(r.error is None for r in RunLog.open(tiny_run.root).baselines())
