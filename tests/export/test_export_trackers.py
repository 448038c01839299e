"""Export and report continue the run's tracker run: the exported candidate and its card and recipes, the plots."""

from __future__ import annotations

from pathlib import Path

from evomerge.config.search import ExecutionConfig, TrackerConfig
from evomerge.export.export import export_candidate
from evomerge.export.report import PLOTS, write_report
from evomerge.run.log import RunLog
from evomerge.run.records import TrackerRecord

from .conftest import export_config, synthetic_run


def tracked_run(tmp_path: Path, family: dict[str, Path]) -> tuple[RunLog, str]:
    project = f"evomerge-{tmp_path.name}"
    cfg = export_config(family, execution=ExecutionConfig(trackers=(TrackerConfig("trackio", project=project),)))
    return synthetic_run(tmp_path / "run", cfg), project


def test_export_sends_the_candidate_and_its_card_and_recipes_to_the_tracker(tmp_path: Path, scored_family,
                                                                            fake_executor, trackio_dir: Path) -> None:
    from trackio.sqlite_storage import SQLiteStorage

    run, project = tracked_run(tmp_path, scored_family)
    result = export_candidate(run.root, tmp_path / "model", executor_factory=fake_executor, quiet=True)
    (tracker,) = RunLog.open(run.root).of_type(TrackerRecord)
    (row,) = [r for r in SQLiteStorage.get_logs(project, tracker.run_id) if "export/candidate" in r]
    exported = (row["export/candidate"], row["export/t0"], row["export/t1"])
    assert exported == (result.record.index, *result.record.objectives)
    manifest = SQLiteStorage.get_artifact_manifest(project, f"tiny-export-candidate-{result.record.index}", None)
    assert manifest is not None and manifest["producer_run_name"] == tracker.run_id
    assert {f["path"] for f in manifest["manifest"]} == {"README.md", "evomerge_recipe.yaml", "mergekit.yaml"}


def test_report_sends_its_plots_to_the_same_tracker_run(tmp_path: Path, scored_family, fake_executor,
                                                        trackio_dir: Path) -> None:
    from trackio.sqlite_storage import SQLiteStorage

    run, project = tracked_run(tmp_path, scored_family)
    write_report(run.root, tmp_path / "report", executor_factory=fake_executor, quiet=True)
    write_report(run.root, tmp_path / "report", executor_factory=fake_executor, quiet=True)
    records = RunLog.open(run.root).of_type(TrackerRecord)
    assert len(records) == 1  # the second report continued the run the first one started
    images = [r for r in SQLiteStorage.get_logs(project, records[0].run_id) if "report/front" in r]
    assert len(images) == 2 and {f"report/{Path(name).stem}" for name in PLOTS} <= set(images[0])
