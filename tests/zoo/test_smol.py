"""The SmolLM2 family without building it: its conditions on hand-made quality records (each fails alone at
its bound, and the build's error names it), and the refusals that come before anything is built."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evomerge.errors import EvomergeError
from evomerge.zoo.check import require
from evomerge.zoo.smol import SKILLS, build_smol
from evomerge.zoo.smol.check import CONDITIONS, verdicts


def table(*, own: float = 0.95, base: float = 0.0, weak: str | None = None) -> dict[str, dict[str, float]]:
    """Held-out rows: the base at ``base`` on every skill, each expert at ``own`` on its own (``weak``'s at 0.89)."""
    rows = {"base": {s: base for s in SKILLS}}
    return rows | {e: {s: (0.89 if e == weak else own) if s == e else base for s in SKILLS} for e in SKILLS}


def room(*, fixed: float = 0.70, ceiling: float = 0.85) -> dict[str, Any]:
    """A fixed-recipe record whose best family (TIES) keeps ``fixed`` mean normalized, and a ceiling."""
    families = {"soup": fixed - 0.2, "task_arithmetic": fixed - 0.1, "ties": fixed, "dare_ties": fixed - 0.05}
    return {"fixed": {f: {"name": f, "heldout": v} for f, v in families.items()}, "ceiling": {"heldout": ceiling}}


def holds(v: dict[str, dict[str, Any]]) -> dict[str, bool]:
    return {name[0]: verdict["holds"] for name, verdict in v.items()}


def test_a_family_with_skilled_experts_and_room_meets_all_three() -> None:
    assert holds(verdicts(table(), room())) == {"a": True, "b": True, "c": True}


def test_the_bounds_are_inclusive() -> None:
    assert holds(verdicts(table(own=0.90, base=0.50), room(fixed=0.85, ceiling=0.95))) == {"a": True, "b": True,
                                                                                           "c": True}


def test_without_a_room_record_only_a_is_judged_and_the_others_say_how_to_judge_them() -> None:
    v = verdicts(table(weak="add"), None, "not checked: run --check-room")
    assert holds(v) == {"a": False, "b": None, "c": None}
    assert [v[CONDITIONS[c]]["evidence"] for c in "bc"] == ["not checked: run --check-room"] * 2


@pytest.mark.parametrize(("rows", "q", "failing"), [
    (table(weak="rev"), room(), "a"),  # an expert below 0.90 on its own skill
    (table(own=0.95, base=0.56), room(), "a"),  # the base within 0.40 of an expert
    (table(), room(fixed=0.86, ceiling=0.99), "b"),  # a fixed recipe keeps nearly everything
    (table(), room(fixed=0.70, ceiling=0.79), "c"),  # the ceiling under best fixed + 0.10
])
def test_each_condition_fails_alone_and_the_error_names_it(rows: dict[str, dict[str, float]], q: dict[str, Any],
                                                           failing: str) -> None:
    v = verdicts(rows, q)
    assert {k for k, h in holds(v).items() if not h} == {failing}
    with pytest.raises(EvomergeError) as e:
        require(v, "the SmolLM2 family (seed 0)")
    message = str(e.value)
    assert "\n" not in message and CONDITIONS[failing] in message
    assert all(CONDITIONS[k] not in message for k in CONDITIONS if k != failing)


def test_an_unknown_variant_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(EvomergeError, match="unknown SmolLM2 family variant 'tiny': choose one of full, reduced"):
        build_smol(tmp_path / "family", variant="tiny")
    assert not (tmp_path / "family").exists()


def test_a_folder_holding_other_files_is_refused_as_the_tiny_zoo_refuses_it(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine\n")
    with pytest.raises(EvomergeError,
                       match="is not empty and holds no SmolLM2 family: choose an empty folder or pass --force"):
        build_smol(tmp_path / "busy", variant="reduced")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
