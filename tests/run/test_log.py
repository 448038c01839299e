"""RunLog: typed append-only records, torn last record ignored by readers and cut by the writer, one session at a time,
refusal to resume over changes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.run.log import LOG, RunLog
from evomerge.run.records import BudgetRecord, CandidateRecord, ChangeRecord, from_line, to_line
from evomerge.scoring.result import TaskScore


def candidate(index: int, **kw) -> CandidateRecord:
    score = TaskScore("t1", "acc", "none", {"acc": True, "perplexity": False},
                      {"acc,none": 0.5, "perplexity,none": math.inf}, {"acc,none": (1.0, 0.0)})
    fields = dict(index=index, key=f"k{index}", x=(0.25, 0.5), parents=(), operator="init", generation=0,
                  scores={"t1": score}, error=None, objectives=(0.5, 0.5))
    fields.update(kw)
    return CandidateRecord(**fields)


def test_a_record_reads_back_exactly_from_its_line() -> None:
    record = candidate(3, time=12.5)
    back = from_line(to_line(record))
    assert back == record or (back.scores["t1"].metrics["perplexity,none"] == math.inf and back.x == record.x)
    assert to_line(back) == to_line(record)


def test_a_non_finite_secondary_metric_is_written_as_strict_json(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {})
    run.append(candidate(0))
    line = (tmp_path / "run" / LOG).read_text().splitlines()[0]
    assert json.loads(line)["scores"]["t1"]["metrics"]["perplexity,none"] == "inf"


def test_records_survive_reopening(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    run.append(candidate(0))
    run.append(BudgetRecord(9))
    again = RunLog.open(tmp_path / "run")
    assert [type(r) for r in again.records] == [CandidateRecord, BudgetRecord]
    assert again.max_evals() == 9
    assert again.config() == tiny_config


def test_append_stamps_the_time(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {})
    assert run.append(candidate(0)).time is not None


def test_torn_last_record_is_ignored_by_readers_and_cut_by_the_writer(tmp_path: Path, tiny_config, capsys) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {})
    run.append(candidate(0))
    with open(tmp_path / "run" / LOG, "ab") as f:
        f.write(b'{"type": "candidate", "ind')
    torn = (tmp_path / "run" / LOG).read_bytes()
    again = RunLog.open(tmp_path / "run")
    assert len(again.records) == 1
    assert "torn" in capsys.readouterr().err
    assert (tmp_path / "run" / LOG).read_bytes() == torn  # reading wrote nothing
    with again.session():
        again.append(candidate(1))
    lines = (tmp_path / "run" / LOG).read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1]


def test_corrupt_middle_record_is_an_error(tmp_path: Path, tiny_config) -> None:
    RunLog.create(tmp_path / "run", tiny_config, {})
    good = to_line(candidate(0))
    (tmp_path / "run" / LOG).write_text(f"{good}\nnot json\n{good}\n")
    with pytest.raises(EvomergeError, match="line 2 is corrupt"):
        RunLog.open(tmp_path / "run")


def test_a_record_with_a_bad_field_names_line_and_field(tmp_path: Path, tiny_config) -> None:
    RunLog.create(tmp_path / "run", tiny_config, {})
    (tmp_path / "run" / LOG).write_text('{"type": "budget", "max_evals": "many"}\n')
    with pytest.raises(EvomergeError, match=r"line 1 field 'max_evals' must be an integer"):
        RunLog.open(tmp_path / "run")


def test_a_folder_holding_a_run_is_not_reused(tmp_path: Path, tiny_config) -> None:
    RunLog.create(tmp_path / "run", tiny_config, {})
    with pytest.raises(EvomergeError, match="evomerge resume"):
        RunLog.create(tmp_path / "run", tiny_config, {})


def test_a_second_session_on_the_same_run_is_refused(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {})
    with run.session():
        with pytest.raises(EvomergeError, match="in use by another evomerge session"):
            with RunLog.open(tmp_path / "run").session():
                pass
    with RunLog.open(tmp_path / "run").session():  # released at the end of the first
        pass


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
    with run.session():
        run.accept(run.check_unchanged({"m": "bb"}, force=True), {"m": "bb"})
        assert [type(r) for r in run.records] == [ChangeRecord]
    RunLog.open(tmp_path / "run").check_unchanged({"m": "bb"}, force=False)


def test_a_session_that_fails_writes_nothing_it_staged(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.name != "session.lock"}
    with pytest.raises(RuntimeError), run.session():
        run.accept(run.check_unchanged({"m": "bb"}, force=True), {"m": "bb"})
        run.stage(BudgetRecord(9))
        raise RuntimeError("the replay failed")
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.name != "session.lock"} == before


def test_staged_records_are_written_before_the_next_record(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    with run.session():
        run.stage(BudgetRecord(9))
        assert run.max_evals() == 9 and RunLog.open(tmp_path / "run").records == []
        run.append(BudgetRecord(10))
    assert [r.max_evals for r in RunLog.open(tmp_path / "run").of_type(BudgetRecord)] == [9, 10]


def test_each_session_gets_a_fresh_study_file(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {})
    (tmp_path / "run" / "optuna.db").write_bytes(b"a study of an earlier session")
    url = run.study_storage()
    assert (url == f"sqlite:///{(tmp_path / 'run' / 'optuna.db').resolve()}"
            and not (tmp_path / "run" / "optuna.db").exists())


def made_before_the_draw_scheme(run_dir: Path) -> None:
    meta = json.loads((run_dir / "run.json").read_text())
    del meta["draws"]
    (run_dir / "run.json").write_text(json.dumps(meta))


def test_a_dare_run_made_under_other_draws_refuses_resume(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config.override(**{"genome.methods": ("dare_ties",)}), {"m": "aa"})
    made_before_the_draw_scheme(tmp_path / "run")
    with pytest.raises(EvomergeError, match=r"DARE/DELLA draws changed \(scheme unrecorded -> .*--force"):
        run.check_unchanged({"m": "aa"}, force=False)


def test_a_run_without_random_methods_resumes_under_any_draws(tmp_path: Path, tiny_config) -> None:
    run = RunLog.create(tmp_path / "run", tiny_config, {"m": "aa"})
    made_before_the_draw_scheme(tmp_path / "run")
    run.check_unchanged({"m": "aa"}, force=False)
