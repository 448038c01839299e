"""The demo as a mergekit-evolve config (configs/zoo-mergekit-evolve.yml) runs unchanged, like its conversion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from evomerge.cli import main
from evomerge.config.mergekit_evolve import convert_text
from evomerge.run.log import RunLog

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "zoo-mergekit-evolve.yml"


def search(config: Path, run_dir: Path, tasks: Path) -> list[tuple]:
    argv = ["search", str(config), "--run-dir", str(run_dir), "--max-evals", "6", "--seed", "0", "--quiet"]
    assert main(argv + (["--task-path", str(tasks)] if config.suffix == ".yml" else [])) == 0
    return [(c.x, c.key, c.objectives) for c in RunLog.open(run_dir).candidates()]


@pytest.mark.slow
def test_the_mergekit_evolve_demo_gives_the_candidates_of_its_converted_config(zoo_dir: Path, tmp_path: Path) -> None:
    # the demo's relative paths (../zoo/...) hold in a copy of its folder next to a link to the repo's zoo
    (tmp_path / "zoo").symlink_to(REPO / "zoo")
    (tmp_path / "configs").mkdir()
    evolve = Path(shutil.copy(DEMO, tmp_path / "configs"))
    native = tmp_path / "configs" / "native.yaml"
    native.write_text(convert_text(evolve, task_path=zoo_dir / "tasks"))
    ran = search(evolve, tmp_path / "run-evolve", zoo_dir / "tasks")
    assert len(ran) == 6 and all(objectives for _, _, objectives in ran)
    assert search(native, tmp_path / "run-native", zoo_dir / "tasks") == ran


def test_migrating_md_shows_the_demos_conversion_as_convert_prints_it(zoo_dir: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # the command as MIGRATING.md gives it, from the repository root
    text = convert_text(Path("configs/zoo-mergekit-evolve.yml"), task_path=Path("zoo/seed0-llama/tasks"))
    assert text.rstrip() in (REPO / "docs" / "MIGRATING.md").read_text()
