"""RunLog: append-only records, torn last record dropped, refusal to resume over changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.run.log import LOG, RunLog


def test_records_survive_reopening(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    run.append({"type": "candidate", "index": 0})
    run.append({"type": "budget", "max_evals": 9})
    again = RunLog.open(tmp_path / "run")
    assert [r["type"] for r in again.records] == ["candidate", "budget"]
    assert again.max_evals() == 9
    assert again.config() == tiny_config


def test_torn_last_record_is_dropped_with_a_warning(tmp_path: Path, tiny_config, capsys) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {})
    run.append({"type": "candidate", "index": 0})
    with open(tmp_path / "run" / LOG, "ab") as f:
        f.write(b'{"type": "candidate", "ind')
    again = RunLog.open(tmp_path / "run")
    assert len(again.records) == 1
    assert "torn" in capsys.readouterr().err
    again.append({"type": "candidate", "index": 1})
    lines = (tmp_path / "run" / LOG).read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]


def test_corrupt_middle_record_is_an_error(tmp_path: Path, tiny_config) -> None:
    RunLog.create(tmp_path / "run", tiny_config, {})
    (tmp_path / "run" / LOG).write_text('{"type": "candidate"}\nnot json\n{"type": "candidate"}\n')
    with pytest.raises(EvomergeError, match="line 2 is corrupt"):
        RunLog.open(tmp_path / "run")


def test_a_folder_holding_a_run_is_not_reused(tmp_path: Path, tiny_config) -> None:
    RunLog.create(tmp_path / "run", tiny_config, {})
    with pytest.raises(EvomergeError, match="evomerge resume"):
        RunLog.create(tmp_path / "run", tiny_config, {})


def test_changed_source_refuses_resume(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    with pytest.raises(EvomergeError, match="--force"):
        run.check_unchanged({"m": "bb"}, force=False)


def test_edited_config_refuses_resume(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    path = tmp_path / "run" / "config.yaml"
    path.write_text(path.read_text().replace("max_evals: 5", "max_evals: 6"))
    with pytest.raises(EvomergeError, match="config.yaml was edited"):
        run.check_unchanged({"m": "aa"}, force=False)


def test_forced_change_is_recorded_and_accepted_afterwards(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    run.check_unchanged({"m": "bb"}, force=True)
    assert [r["type"] for r in run.records] == ["change"]
    RunLog.open(tmp_path / "run").check_unchanged({"m": "bb"}, force=False)
