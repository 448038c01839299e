"""The zoo's conditions, on hand-made quality records: what passes, what fails, and that a failure names itself."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.zoo.check import (
    CONDITIONS,
    FIXED_KINDS,
    choose,
    conditions,
    fixed_merge,
    grid,
    normalized,
    require,
    settings,
)

SKILLS = ("rev", "sort", "up", "dup")


def record(*, own: float = 1.0, base: float = 0.3, fixed: float = 0.7, ceiling: float | None = None,
           weak: str | None = None) -> dict[str, Any]:
    """A quality record: experts at ``own`` (``weak``'s expert at 0.9), the base at ``base``, every fixed
    recipe keeping ``fixed`` of each skill (so ``fixed`` mean normalized), the ceiling if given."""
    experts = {s: 0.9 if s == weak else own for s in SKILLS}
    table = {"base": {s: base for s in SKILLS}}
    table |= {f"expert {s}": {t: experts[s] if t == s else base for t in SKILLS} for s in SKILLS}
    fixed_rows = {kind: {"setting": {}, "row": kind, "calibration": fixed, "heldout": fixed} for kind in FIXED_KINDS}
    table |= {kind: {s: fixed * experts[s] for s in SKILLS} for kind in FIXED_KINDS}
    q: dict[str, Any] = {"table": table, "fixed": fixed_rows}
    if ceiling is not None:
        q["ceiling"] = {"heldout": ceiling}
    return q


def holds(q: dict[str, Any]) -> dict[str, bool | None]:
    return {name[0]: verdict for name, (verdict, _) in conditions(q).items()}


def test_a_zoo_with_distinct_experts_and_room_passes_all_three() -> None:
    assert holds(record(ceiling=0.85)) == {"a": True, "b": True, "c": True}


def test_c_is_pending_until_a_ceiling_is_recorded_and_pending_is_not_failing() -> None:
    q = record()
    assert holds(q)["c"] is None
    require({name: {"holds": h, "evidence": e} for name, (h, e) in conditions(q).items()}, "the zoo")


@pytest.mark.parametrize(("q", "failing"), [
    (record(weak="sort"), "a"),  # an expert below 0.95 on its own skill
    (record(base=0.61), "a"),  # the base within 0.40 of the experts: they add too little
    (record(fixed=0.86), "b"),  # a fixed recipe keeps nearly everything: nothing for search to win
    (record(fixed=0.70, ceiling=0.81), "c"),  # the ceiling only 0.11 above the best fixed recipe
])
def test_each_condition_fails_alone_and_the_error_names_it(q: dict[str, Any], failing: str) -> None:
    verdicts = holds(q)
    assert verdicts[failing] is False
    assert all(v is not False for name, v in verdicts.items() if name != failing)
    with pytest.raises(EvomergeError, match=rf"seed 3.* misses condition {failing}: .*try another --seed"):
        require({name: {"holds": h, "evidence": e} for name, (h, e) in conditions(q).items()}, "the zoo (seed 3)")


def test_bounds_are_inclusive() -> None:
    assert holds(record(own=0.95, base=0.55, fixed=0.85, ceiling=0.97)) == {"a": True, "b": True, "c": True}


def test_best_fixed_is_the_best_kind_on_held_out() -> None:
    q = record(ceiling=0.9)
    q["fixed"]["ties"]["heldout"] = 0.8
    evidence = {name: text for name, (_, text) in conditions(q).items()}
    assert evidence[CONDITIONS["b"]].startswith("best ties 0.800")
    assert holds(q)["c"] is False  # 0.9 < 0.8 + 0.12


def test_normalized_divides_each_skill_by_its_own_expert() -> None:
    assert normalized({"rev": 0.5, "up": 0.9}, {"rev": 1.0, "up": 0.9}) == pytest.approx(0.75)


def test_grids_are_the_issue_s() -> None:
    assert [s["lambda"] for s in settings("task_arithmetic")] == pytest.approx([0.1 * i for i in range(1, 16)])
    assert len(settings("ties")) == len(settings("dare_ties")) == 45 and settings("uniform_soup") == [{}]
    assert {s["density"] for s in settings("dare_ties")} == {0.3, 0.5, 0.7}


def test_fixed_recipes_are_the_merge_methods_of_the_project() -> None:
    base = {"w": torch.zeros(4)}
    experts = [{"w": torch.tensor([1.0, 0.0, 2.0, 0.0])}, {"w": torch.tensor([0.0, 1.0, 2.0, 0.0])}]
    assert torch.equal(fixed_merge("task_arithmetic", {"lambda": 0.5}, base, experts, seed=0)["w"],
                       torch.tensor([0.5, 0.5, 2.0, 0.0]))
    assert torch.equal(fixed_merge("uniform_soup", {}, base, experts, seed=0)["w"], torch.tensor([0.5, 0.5, 2.0, 0.0]))
    # TIES keeps the top half of each τ by magnitude and averages the agreeing entries (normalized by default).
    assert torch.equal(fixed_merge("ties", {"density": 0.5, "lambda": 1.0}, base, experts, seed=0)["w"],
                       torch.tensor([1.0, 1.0, 2.0, 0.0]))


def test_each_kind_takes_its_best_setting_and_the_first_of_equals() -> None:
    candidates = grid(lambdas=(0.2, 0.4, 0.6), densities=(0.3, 0.7))
    assert [kind for kind, _ in candidates] == ["task_arithmetic"] * 3 + ["ties"] * 6 + ["dare_ties"] * 6 + ["uniform_soup"]
    values = {"task_arithmetic": [0.5, 0.7, 0.7], "ties": [0.1, 0.2, 0.3, 0.6, 0.2, 0.1],
              "dare_ties": [0.4] * 6, "uniform_soup": [0.3]}
    chosen = choose(candidates, [v for kind in FIXED_KINDS for v in values[kind]])
    assert chosen == {"task_arithmetic": ({"lambda": 0.4}, 0.7), "ties": ({"density": 0.7, "lambda": 0.2}, 0.6),
                      "dare_ties": ({"density": 0.3, "lambda": 0.2}, 0.4), "uniform_soup": ({}, 0.3)}
