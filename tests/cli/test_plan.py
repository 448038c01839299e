"""``evomerge search CONFIG --plan`` prints the memory plan and runs nothing; a budget below the minimum is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.cli import main

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, family: dict[str, Path], **execution) -> Path:
    data = {
        "name": "plan", "sources": {"base": str(family["base"]), "models": [str(family["a"]), str(family["b"])]},
        "genome": {"methods": ["ties", "dare_ties"]}, "scoring": {"task_path": str(family["tasks"])},
        "objectives": [{"task": "tiny_rev", "metric": "perplexity"}], "execution": execution,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_plan_of_the_8b_example_works_without_its_model_folders(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["search", str(REPO / "configs" / "llama3-8b-example.yaml"), "--plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("memory plan: 8 worker(s) on cuda, budget 64.0 GB per worker")
    assert "per node" in out and "live model" in out and "TIES cuts: histograms" in out and "total" in out


def test_plan_prints_and_writes_nothing(tmp_path: Path, scored_family, capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, scored_family, memory_budget="2GB")
    assert main(["search", str(path), "--plan", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "budget 2.0 GB per worker (from execution.memory_budget)" in out and "sorted copies" in out
    assert not (tmp_path / "run").exists()


def test_a_budget_below_the_minimum_is_one_line_before_a_run_folder_exists(tmp_path: Path, scored_family,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, scored_family, memory_budget="10kB")
    assert main(["search", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot hold the minimum" in err[0] and "execution.memory_budget" in err[0]
    assert not (tmp_path / "run").exists()


def test_plan_without_the_folders_needs_their_shape(tmp_path: Path, scored_family,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = config(tmp_path, {**scored_family, "base": tmp_path / "elsewhere"})
    assert main(["search", str(path), "--plan"]) == 2
    assert "sources.shape" in capsys.readouterr().err
