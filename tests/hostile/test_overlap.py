"""Outputs never overlap inputs: an output that is, holds or lies inside a run folder, a model or task folder the
command reads, or the package itself, is refused — ``--force`` included (it replaces an earlier output, never an
input)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import evomerge
from evomerge.errors import EvomergeError
from evomerge.sources import writer
from evomerge.sources.writer import check_outside


def test_export_over_its_own_run_folder_is_refused_even_with_force(refused, run_dir: Path, family) -> None:
    refused(["export", str(run_dir), "--out", str(run_dir), "--force"], "is the run folder", run_dir, *family.values())


def test_export_into_a_file_of_its_run_folder_is_refused(refused, run_dir: Path, family) -> None:
    refused(["export", str(run_dir), "--out", str(run_dir / "log.jsonl"), "--force"], "lies inside the run folder",
            run_dir, *family.values())


def test_export_over_a_folder_holding_its_run_is_refused(refused, run_dir: Path, family) -> None:
    refused(["export", str(run_dir), "--out", str(run_dir.parent), "--force"], "holds the run folder",
            run_dir, *family.values())


@pytest.mark.parametrize("name", ["base", "a", "tasks"])
def test_export_over_a_folder_its_run_reads_is_refused(refused, run_dir: Path, family, name: str) -> None:
    kind = "task" if name == "tasks" else "model"
    refused(["export", str(run_dir), "--out", str(family[name]), "--force"], f"is the {kind} folder", run_dir,
            *family.values())


def test_export_through_a_link_to_a_source_is_refused(refused, run_dir: Path, family, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(family["b"])
    refused(["export", str(run_dir), "--out", str(tmp_path / "link"), "--force"], "is the model folder",
            run_dir, *family.values())


def test_report_into_its_run_folder_is_refused(refused, run_dir: Path, family) -> None:
    refused(["report", str(run_dir), "--out", str(run_dir)], "is the run folder", run_dir, *family.values())


def test_report_into_a_source_folder_is_refused(refused, run_dir: Path, family) -> None:
    refused(["report", str(run_dir), "--out", str(family["a"] / "report")], "lies inside the model folder",
            run_dir, *family.values())


def merge_recipe(tmp_path: Path, family: dict[str, Path]) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"method": "task_arithmetic", "base": str(family["base"]), "sources": [
        {"model": str(family[m]), "parameters": {"weight": 0.5}} for m in ("a", "b")]}))
    return path


@pytest.mark.parametrize("name", ["base", "b"])
def test_merge_over_a_source_folder_is_refused_even_with_force(refused, tmp_path: Path, family, name: str) -> None:
    recipe = merge_recipe(tmp_path, family)
    refused(["merge", str(recipe), "--out", str(family[name]), "--force"], "is the model folder", recipe,
            *family.values())


def test_merge_over_a_folder_holding_its_sources_is_refused(refused, tmp_path: Path, family) -> None:
    recipe = merge_recipe(tmp_path, family)
    refused(["merge", str(recipe), "--out", str(family["base"].parent), "--force"], "holds the model folder",
            recipe, *family.values())


def test_merge_over_its_recipe_file_is_refused(refused, tmp_path: Path, family) -> None:
    recipe = merge_recipe(tmp_path, family)
    refused(["merge", str(recipe), "--out", str(recipe), "--force"], "is the recipe", recipe, *family.values())


def test_a_run_folder_inside_a_source_folder_is_refused(refused, config_file, family) -> None:
    config = config_file()
    refused(["search", str(config), "--run-dir", str(family["a"] / "run")], "lies inside the model folder",
            config, *family.values())


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for the package folder, so that a failing check cannot harm the real one."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "cli.py").write_text("# the package\n")
    monkeypatch.setattr(writer, "PACKAGE", tmp_path / "pkg")
    return tmp_path / "pkg"


@pytest.mark.parametrize("command", ["build", "smol"])
def test_a_zoo_inside_the_package_is_refused_even_with_force(refused, package: Path, command: str) -> None:
    refused(["zoo", command, str(package / "zoo"), "--force", "--quiet"], "lies inside the evomerge package", package)


def test_a_zoo_over_a_folder_holding_the_package_is_refused(refused, package: Path) -> None:
    refused(["zoo", "build", str(package.parent), "--force", "--quiet"], "holds the evomerge package", package)


def test_the_check_knows_the_real_package() -> None:
    with pytest.raises(EvomergeError, match="is the evomerge package"):
        check_outside(Path(evomerge.__file__).parent, [])
    check_outside(Path(evomerge.__file__).parent.parent / "not-the-package", [])


def test_merge_over_a_source_without_force_names_the_overlap_not_force(refused, tmp_path: Path, family) -> None:
    recipe = merge_recipe(tmp_path, family)
    line = refused(["merge", str(recipe), "--out", str(family["a"])], "is the model folder", recipe, *family.values())
    assert "pass --force" not in line
