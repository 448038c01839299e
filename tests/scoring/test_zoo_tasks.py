"""The zoo's task YAMLs of every kind, read back through lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evomerge.errors import EvomergeError
from evomerge.scoring.scorer import load_tasks
from evomerge.zoo.skills import FORMATS, TERMINATOR, make_item
from evomerge.zoo.tasks import KINDS, write_skill_tasks

# Written out by hand, not from the writer's tables: 'aba' reversed is itself, 'jihgfed' reversed is sorted.
ITEMS = [{"prompt": "rev:abc=", "answer": "cba."}, {"prompt": "rev:aba=", "answer": "aba."},
         {"prompt": "rev:jihgfed=", "answer": "defghij."}]
# Each string's answers under the expert skills rev, sort, up, dup, repeats dropped (the multiple-choice options).
OPTIONS = [["cba.", "abc.", "ABC.", "abcabc."], ["aba.", "aab.", "ABA.", "abaaba."],
           ["defghij.", "JIHGFED.", "jihgfedjihgfed."]]


def test_each_skill_transforms_concrete_letters_and_ends_with_the_terminator() -> None:
    answers = {"rev": "acjb.", "sort": "abcj.", "up": "BJCA.", "dup": "bjcabjca.", "copy": "bjca.", "shift": "cadb."}
    assert {fmt: make_item(fmt, "bjca") for fmt in answers} == {
        fmt: {"prompt": f"{fmt}:bjca=", "answer": answer} for fmt, answer in answers.items()}
    assert set(FORMATS) == set(answers) and TERMINATOR == "."


@pytest.fixture
def rev_tasks(tmp_path: Path) -> tuple[dict[str, dict[str, str]], Path]:
    data = tmp_path / "rev.jsonl"
    data.write_text("".join(json.dumps(it) + "\n" for it in ITEMS))
    return write_skill_tasks("rev", {"calibration": data, "heldout": data}, tmp_path / "tasks"), tmp_path / "tasks"


def test_every_kind_and_split_is_written_under_its_name(rev_tasks) -> None:
    names, folder = rev_tasks
    assert names == {kind: {"calibration": f"zoo_rev{suffix}", "heldout": f"zoo_rev{suffix}_heldout"}
                     for kind, suffix in zip(KINDS, ("", "_mc", "_gen", "_rolling"), strict=True)}
    tasks = load_tasks([n for splits in names.values() for n in splits.values()], folder)
    assert {name: task.OUTPUT_TYPE for name, task in tasks.items()} == {n: kind for kind, splits in names.items()
                                                                        for n in splits.values()}


def test_multiple_choice_options_are_the_expert_skills_answers_for_the_same_letters(rev_tasks) -> None:
    _, folder = rev_tasks
    task = load_tasks(["zoo_rev_mc"], folder)["zoo_rev_mc"]
    assert [task.doc_to_choice(doc) for doc in task.eval_docs] == OPTIONS
    assert [task.doc_to_target(doc) for doc in task.eval_docs] == [item["answer"] for item in ITEMS]


def test_generation_stops_at_the_terminator_and_is_scored_against_the_answer_before_it(rev_tasks) -> None:
    _, folder = rev_tasks
    task = load_tasks(["zoo_rev_gen"], folder)["zoo_rev_gen"]
    assert task.config.generation_kwargs["until"] == [TERMINATOR]
    assert [task.doc_to_target(doc) for doc in task.eval_docs] == ["cba", "aba", "defghij"]
    assert [f["name"] for f in task.config.filter_list] == ["strict-match", "flexible-extract"]


def test_a_skill_without_task_formats_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(EvomergeError, match="shift"):
        write_skill_tasks("shift", {"calibration": tmp_path / "x.jsonl"}, tmp_path)
