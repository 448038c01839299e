"""A run folder is read, never written, by whoever only reads it; a hand-damaged one is one line naming the file and
the line in every command that reads it; a refused or failing resume writes nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from evomerge.cli import main
from evomerge.run.log import RunLog

READERS = {  # argv of each command that reads a run folder
    "resume": lambda run, tmp: ["resume", str(run), "--quiet"],
    "export": lambda run, tmp: ["export", str(run), "--out", str(tmp / "model"), "--quiet"],
    "status": lambda run, tmp: ["status", str(run)],
    "report": lambda run, tmp: ["report", str(run), "--out", str(tmp / "report"), "--quiet"],
}


def edit_line(path: Path, number: int, change: Callable[[dict], None]) -> None:
    """Change the JSON record on line ``number`` (1-based) of a log in place."""
    lines = path.read_text().splitlines()
    record = json.loads(lines[number - 1])
    change(record)
    lines[number - 1] = json.dumps(record)
    path.write_text("\n".join(lines) + "\n")


DAMAGE = {  # how a file is damaged, and what the one line must say
    "truncated run.json": (lambda run: (run / "run.json").write_text((run / "run.json").read_text()[:40]),
                           "run.json is not valid JSON (line"),
    "config.yaml not YAML": (lambda run: (run / "config.yaml").write_text("name: [hostile\nseed: 0\n"),
                             "config.yaml is not valid YAML at line"),
    "a gene missing": (lambda run: edit_line(run / "log.jsonl", 4, lambda r: r.update(x=r["x"][:-1])),
                       "log.jsonl line 4: candidate 3 has"),
    "a gene outside [0, 1]": (lambda run: edit_line(run / "log.jsonl", 2, lambda r: r["x"].__setitem__(0, 1.5)),
                              "log.jsonl line 2: candidate 1 has a gene outside [0, 1]"),
    "an objective missing": (lambda run: edit_line(run / "log.jsonl", 5, lambda r: r.update(objectives=[0.5])),
                             "log.jsonl line 5: candidate 4 has 1 objective values for the run's 2 objectives"),
    "a gene that is no number": (lambda run: edit_line(run / "log.jsonl", 3, lambda r: r["x"].__setitem__(0, "half")),
                                 "log.jsonl line 3 field 'x[0]' must be a number"),
    "a candidate logged twice": (lambda run: edit_line(run / "log.jsonl", 4, lambda r: r.update(index=2)),
                                 "log.jsonl line 4: candidate 2 comes where candidate 3 belongs"),
}


@pytest.mark.parametrize("command", READERS)
@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_run_folder_is_one_line_naming_the_file(refused, run_dir: Path, family, tmp_path: Path,
                                                          damage: str, command: str) -> None:
    spoil, fragment = DAMAGE[damage]
    spoil(run_dir)
    refused(READERS[command](run_dir, tmp_path), fragment, run_dir, *family.values())
    assert not (tmp_path / "model").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize("command", ["resume", "export", "report"])
def test_genomes_that_do_not_fit_the_config_are_refused(refused, run_dir: Path, family, tmp_path: Path,
                                                        command: str) -> None:
    lines = (run_dir / "log.jsonl").read_text().splitlines()
    for number in range(1, len(lines) + 1):  # every genome one gene longer: the log agrees with itself, not the config
        edit_line(run_dir / "log.jsonl", number, lambda r: r.update(x=[*r["x"], 0.5]))
    refused(READERS[command](run_dir, tmp_path), "log.jsonl line 1: candidate 0 has", run_dir, *family.values())


def tear(run_dir: Path) -> None:
    """A last record cut mid-write, as a crash (or a write in progress) leaves it."""
    with open(run_dir / "log.jsonl", "ab") as f:
        f.write(b'{"type": "candidate", "index": 6, "ke')


def test_status_reads_a_torn_log_without_writing_it(run_dir: Path, snapshot, capsys) -> None:
    tear(run_dir)
    before = snapshot(run_dir)
    with RunLog.open(run_dir).session():  # a search holds the run meanwhile
        capsys.readouterr()
        assert main(["status", str(run_dir)]) == 0
    captured = capsys.readouterr()
    assert "6 / 6 candidates" in captured.out
    assert "warning: ignoring a torn last line" in captured.err and "Traceback" not in captured.err
    assert snapshot(run_dir) == before


def test_the_session_holding_the_lock_cuts_a_torn_line_before_it_appends(run_dir: Path) -> None:
    from evomerge.run.records import BudgetRecord

    whole = (run_dir / "log.jsonl").read_bytes()
    tear(run_dir)
    run = RunLog.open(run_dir)
    with run.session():
        run.append(BudgetRecord(8))
    assert (run_dir / "log.jsonl").read_bytes().startswith(whole)
    assert [type(r) for r in RunLog.open(run_dir).records][-1] is BudgetRecord


@pytest.mark.parametrize("name", ["log.jsonl", "run.json", "config.yaml"])
def test_a_run_file_linked_out_of_the_folder_is_refused(refused, run_dir: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    (run_dir / name).rename(outside)
    (run_dir / name).symlink_to(outside)
    refused(["status", str(run_dir)], f"{name} is a link to {outside}, outside the run folder", run_dir, outside.parent)


def test_a_session_lock_linked_out_of_the_folder_is_refused(refused, run_dir: Path, tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("not a lock\n")
    (run_dir / "session.lock").symlink_to(victim)
    refused(["resume", str(run_dir), "--quiet"], "session.lock is a link to", run_dir, victim)


def test_resume_below_the_candidates_done_is_refused(refused, run_dir: Path, family) -> None:
    refused(["resume", str(run_dir), "--max-evals", "4", "--quiet"], "--max-evals 4 is below the 6 candidates",
            run_dir, *family.values())


def test_a_forced_resume_that_fails_writes_nothing(refused, run_dir: Path, family) -> None:
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("- task_arithmetic", "- tiez"))
    refused(["resume", str(run_dir), "--force", "--quiet"], "tiez", run_dir, *family.values())


def test_a_forced_resume_whose_replay_fails_writes_nothing(refused, run_dir: Path, family) -> None:
    """The fixture's genomes are not what the strategy asks, so the replay fails at candidate 0: the forced change
    and the new budget, staged before the replay, are never written."""
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("batch_size: 16", "batch_size: 8"))
    refused(["resume", str(run_dir), "--force", "--max-evals", "8", "--quiet"], "candidate 0 differs from the log",
            run_dir, *family.values())
