"""A family's check: the conditions on hand-made quality records, and ``check_fixed`` on constructed scores
(what it scores, how it names, normalizes and chooses)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from evomerge.config.search import ObjectiveConfig
from evomerge.errors import EvomergeError
from evomerge.recipes.fixed import GRID_FAMILIES, MERGE_FAMILIES, FixedRecipe, fixed_recipes
from evomerge.scoring.normalize import Normalizer
from evomerge.zoo import check
from evomerge.zoo.check import CONDITIONS, ModelFamily, check_fixed, conditions, require

SKILLS = ("rev", "sort", "up", "dup")
GRID = {"lambdas": (0.2, 0.6), "densities": (0.5,)}


def record(*, own: float = 1.0, base: float = 0.3, fixed: float = 0.7, ceiling: float | None = None,
           weak: str | None = None) -> dict[str, Any]:
    """A quality record: experts at ``own`` (``weak``'s expert at 0.9), the base at ``base``, every fixed
    recipe keeping ``fixed`` of each skill (so ``fixed`` mean normalized), the ceiling if given."""
    experts = {s: 0.9 if s == weak else own for s in SKILLS}
    table = {"base": {s: base for s in SKILLS}}
    table |= {f"source{i}": {t: experts[s] if t == s else base for t in SKILLS} for i, s in enumerate(SKILLS)}
    fixed_rows = {f: {"name": f, "label": f, "params": {}, "calibration": fixed, "heldout": fixed}
                  for f in MERGE_FAMILIES}
    table |= {f: {s: fixed * experts[s] for s in SKILLS} for f in MERGE_FAMILIES}
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


def test_best_fixed_is_the_best_family_on_held_out() -> None:
    q = record(ceiling=0.9)
    q["fixed"]["ties"] |= {"name": "ties@d0.3,l0.4", "heldout": 0.8}
    evidence = {name: text for name, (_, text) in conditions(q).items()}
    assert evidence[CONDITIONS["b"]].startswith("best ties@d0.3,l0.4 0.800")
    assert holds(q)["c"] is False  # 0.9 < 0.8 + 0.12


class ConstructedScores:
    """Stands in for ``check.FamilyScorer``: every fixed recipe's raw scores from a table built in code, and
    the (name, split) of each evaluation asked of it."""

    asked: list[tuple[str, str]] = []

    def __init__(self, family: ModelFamily) -> None:
        self.higher = (True,) * len(family.skills)

    def fixed(self, member: FixedRecipe, split: str) -> tuple[float, ...]:
        self.asked.append((member.name, split))
        return constructed(member, split)


def constructed(member: FixedRecipe, split: str) -> tuple[float, ...]:
    """Distinct scores per member and split: each expert 0.9 on its own skill, but the best on skill 0 is expert 3
    (0.95), so normalizing by the best source differs from normalizing by each skill's own; every merge differs."""
    if member.family.startswith("source"):
        i = int(member.family.removeprefix("source"))
        return tuple(0.9 if j == i else 0.95 if (i, j) == (3, 0) else 0.2 + 0.1 * i for j in range(4))
    seed = sum(map(ord, member.name)) + (7 if split == "heldout" else 0)
    return tuple(0.1 + ((seed * (j + 3)) % 17) / 20 for j in range(4))


@pytest.fixture
def constructed_check(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setattr(check, "FamilyScorer", ConstructedScores)
    ConstructedScores.asked = []
    family = ModelFamily(Path("base"), {s: Path(s) for s in SKILLS},
                         {s: ObjectiveConfig(task=f"zoo_{s}") for s in SKILLS})
    return check_fixed(family, **GRID)


def test_the_check_scores_fixed_recipes_grid_on_calibration(constructed_check: dict[str, Any]) -> None:
    families = fixed_recipes(len(SKILLS), SKILLS, **GRID)
    expected = [m.name for members in families.values() for m in members]
    assert [name for name, split in ConstructedScores.asked if split == "calibration"] == expected
    held = [name for name, split in ConstructedScores.asked if split == "heldout"]
    assert held == ["base", "source0", "source1", "source2", "source3", "soup", "tsvm",
                    *(constructed_check["fixed"][f]["name"] for f in GRID_FAMILIES)]  # the table's rows only


def test_held_out_scores_the_caller_knows_are_reused_not_scored_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check, "FamilyScorer", ConstructedScores)
    ConstructedScores.asked = []
    family = ModelFamily(Path("base"), {s: Path(s) for s in SKILLS},
                         {s: ObjectiveConfig(task=f"zoo_{s}") for s in SKILLS})
    sources = fixed_recipes(len(SKILLS), SKILLS, **GRID)
    known = {name: constructed(sources[name][0], "heldout") for name in ("base", "source0", "source1")}
    q = check_fixed(family, **GRID, known=known)
    held = [name for name, split in ConstructedScores.asked if split == "heldout"]
    assert "base" not in held and "source0" not in held and "source1" not in held
    assert "source2" in held and "soup" in held
    assert q["table"]["base"] == dict(zip(SKILLS, known["base"], strict=True))


def test_the_soup_and_the_grid_members_carry_the_reports_names(constructed_check: dict[str, Any]) -> None:
    assert list(constructed_check["fixed"]) == list(MERGE_FAMILIES) == ["soup", "tsvm", "task_arithmetic", "ties",
                                                                        "dare_ties"]
    assert constructed_check["fixed"]["soup"]["name"] == "soup" and "soup" in constructed_check["table"]
    assert constructed_check["fixed"]["task_arithmetic"]["name"] in ("task_arithmetic@0.2", "task_arithmetic@0.6")
    assert set(constructed_check["table"]) == set(constructed_check["calibration_table"])


def test_fixed_scores_are_the_normalizer_s_and_members_its_choice_on_calibration(constructed_check: dict[str,
                                                                                                         Any]) -> None:
    families = fixed_recipes(len(SKILLS), SKILLS, **GRID)
    sources = [families[f"source{i}"][0] for i in range(len(SKILLS))]
    normalizer = Normalizer.from_sources([True] * 4, {split: [constructed(m, split) for m in sources]
                                                      for split in ("calibration", "heldout")})
    assert normalizer.reference["calibration"] == (0.95, 0.9, 0.9, 0.9)
    for name in MERGE_FAMILIES:
        chosen = normalizer.best([(m, constructed(m, "calibration")) for m in families[name]], "calibration")
        assert constructed_check["fixed"][name] == {
            "name": chosen.name, "label": chosen.label, "params": dict(chosen.params),
            "calibration": round(normalizer.mean(constructed(chosen, "calibration"), "calibration"), 4),
            "heldout": round(normalizer.mean(constructed(chosen, "heldout"), "heldout"), 4)}
        assert constructed_check["table"][chosen.name] == dict(zip(SKILLS, constructed(chosen, "heldout"), strict=True))


def test_a_family_s_experts_and_objectives_name_the_same_skills() -> None:
    with pytest.raises(EvomergeError, match="same skills in the same order"):
        ModelFamily(Path("base"), {"rev": Path("rev"), "up": Path("up")},
               {"up": ObjectiveConfig(task="zoo_up"), "rev": ObjectiveConfig(task="zoo_rev")})
