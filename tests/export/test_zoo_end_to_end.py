"""On the zoo, through the CLI: search a few candidates, export, report — every score from the real worker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from evomerge.cli import main
from evomerge.run.log import RunLog


@pytest.mark.slow
def test_search_export_report_on_the_zoo(zoo_dir: Path, tmp_path: Path, capsys) -> None:
    zoo = Path(zoo_dir)
    config = {
        "name": "export-e2e", "seed": 0,
        "sources": {"base": str(zoo / "models" / "base"),
                    "models": [str(zoo / "models" / "rev"), str(zoo / "models" / "sort")]},
        "genome": {"methods": ["task_arithmetic"], "layer_granularity": 2},
        "scoring": {"task_path": str(zoo / "tasks")},
        "objectives": [{"task": "zoo_rev", "heldout_task": "zoo_rev_heldout", "metric": "acc"},
                       {"task": "zoo_sort", "heldout_task": "zoo_sort_heldout", "metric": "acc"}],
        "strategy": {"name": "cmaes"},
        "budget": {"max_evals": 6},
        "execution": {"in_flight": 2, "threads": 1},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_dir, out = tmp_path / "run", tmp_path / "model"
    assert main(["search", str(tmp_path / "config.yaml"), "--run-dir", str(run_dir), "--quiet"]) == 0
    assert main(["export", str(run_dir), "--out", str(out), "--rescore-heldout", "2", "--quiet"]) == 0
    assert main(["report", str(run_dir), "--quiet"]) == 0

    run = RunLog.open(run_dir)
    assert run.exports() and run.exports()[-1].key in run.heldout()  # the exported candidate was re-scored on held-out
    card = (out / "README.md").read_text()
    assert all(sha in card for sha in run.meta.sources.values())
    summary = (run_dir / "report" / "summary.md").read_text()
    assert "| rev alone |" in summary and "| RegMean (α=0.9) |" in summary and "| Fisher averaging |" in summary
    assert "| statistics | input Gram matrices of 2 source(s): computed once in " in summary
    assert "; diagonal Fisher information of 2 source(s): computed once in " in summary
    # RegMean's and Fisher's statistics: computed once per source by the export's worker, kept in the run folder
    assert sorted(p.name for p in (run_dir / "statistics").iterdir()) == [
        "fisher-source0.safetensors", "fisher-source1.safetensors",
        "gram-source0.safetensors", "gram-source1.safetensors"]
    assert all((run_dir / "report" / p).is_file() for p in ("fitness.png", "objectives.png", "front.png"))

    # "rev alone" is scored through the merge path; it must equal scoring the rev folder itself
    capsys.readouterr()
    assert main(["evaluate", str(zoo / "models" / "rev"), "--tasks", "zoo_rev_heldout", "--task-path",
                 str(zoo / "tasks"), "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)["zoo_rev_heldout"]["acc,none"]
    record = next(r for r in run.baselines() if r.name == "source0" and r.split == "heldout")
    assert record.scores["zoo_rev_heldout"].metrics["acc,none"] == pytest.approx(direct, abs=1e-9)
