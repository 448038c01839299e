"""Preflight refuses a search that optimizes on lm-eval's own benchmark test sets, unless the config allows it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from evomerge.cli import main
from evomerge.config.search import ObjectiveConfig, SearchConfig
from evomerge.errors import EvomergeError
from evomerge.run.preflight import check, check_benchmarks


def with_tasks(cfg: SearchConfig, *tasks: str, task_path: Path | None = None, allow: bool = False) -> SearchConfig:
    scoring = dataclasses.replace(cfg.scoring, task_path=task_path, allow_benchmark_tasks=allow)
    return dataclasses.replace(cfg, objectives=tuple(ObjectiveConfig(task=t) for t in tasks), scoring=scoring)


def test_a_benchmark_task_to_optimize_on_is_refused_naming_the_objective(tiny_config: SearchConfig) -> None:
    with pytest.raises(EvomergeError, match=r"'objectives\[1\].task': 'gsm8k' is lm-eval's test set .* "
                                            "scoring.allow_benchmark_tasks: true"):
        check(with_tasks(tiny_config, "my_task", "gsm8k"))


def test_the_config_may_allow_benchmark_tasks(tiny_config: SearchConfig) -> None:
    check_benchmarks(with_tasks(tiny_config, "mmlu_anatomy", allow=True))


def test_a_training_split_task_is_not_a_test_set(tiny_config: SearchConfig) -> None:
    check_benchmarks(with_tasks(tiny_config, "gsm8k_train"))


def test_tasks_from_the_users_own_folder_are_not_lm_evals(tiny_config: SearchConfig, tmp_path: Path) -> None:
    check_benchmarks(with_tasks(tiny_config, "gsm8k_calib", task_path=tmp_path))


def test_a_held_out_benchmark_is_fine(tiny_config: SearchConfig) -> None:
    cfg = with_tasks(tiny_config, "mine")
    check_benchmarks(dataclasses.replace(cfg, objectives=(ObjectiveConfig(task="mine", heldout_task="hellaswag"),)))


@pytest.mark.slow  # lm-eval indexes its own tasks: ~20 s
def test_search_flag_allows_benchmark_tasks(tmp_path: Path, tiny_family, capsys) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sources": {"base": str(tiny_family["base"]), "models": [str(tiny_family["a"])]},
                                    "objectives": [{"task": "arc_easy_no_such_variant"}]}))
    assert main(["search", str(path), "--check"]) == 2
    assert "allow_benchmark_tasks" in capsys.readouterr().err
    assert main(["search", str(path), "--check", "--allow-benchmark-tasks"]) == 2  # now the task index is asked
    assert "unknown lm-eval task 'arc_easy_no_such_variant'" in capsys.readouterr().err
