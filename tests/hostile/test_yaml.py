"""Hostile YAML: every YAML file evomerge reads (search configs, recipes, a run's config, a base's card front matter)
goes through one loader that refuses a recursive alias and bounds what aliases expand to, so a hostile file is one
line naming it, at once, instead of a RecursionError or minutes of work."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from evomerge.config.schema import MAX_YAML_VALUES, parse_yaml
from evomerge.errors import EvomergeError
from evomerge.export.card import declared_license

from .hostile_files import assert_refused, copy_family, recipe_yaml, search_yaml


def bomb(depth: int, indent: str = "") -> list[str]:
    """Anchors each naming nine of the previous: 9**depth values once expanded, from depth + 1 short lines."""
    lines = [f"{indent}x0: &a0 [{', '.join(['lol'] * 9)}]"]
    lines += [f"{indent}x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth + 1)]
    return lines


def with_strategy_block(config: Path, block: list[str]) -> Path:
    """The config with its strategy section written by hand (options take any mapping: the schema passes them on)."""
    data = yaml.safe_load(config.read_text())
    del data["strategy"]
    config.write_text(yaml.safe_dump(data) + "\n".join(["strategy:", "  name: random", *block]) + "\n")
    return config


@pytest.fixture
def fam(tmp_path: Path, scored_family: dict[str, Path]) -> dict[str, Path]:
    return copy_family(tmp_path / "models", scored_family)


@pytest.mark.timeout(120)  # a hang guard, not a time check: expanding it took minutes
def test_an_alias_bomb_in_a_search_config_is_refused_before_it_is_expanded(fam, tmp_path: Path, capsys) -> None:
    """9**8 = 43 million values: search --check was busy for minutes on it."""
    config = with_strategy_block(search_yaml(tmp_path / "cfg", fam), ["  options:", *bomb(8, "    ")])
    line = assert_refused(["search", str(config), "--check"], capsys,
                          f"its aliases expand to more than {MAX_YAML_VALUES:,} values", *fam.values(), config)
    assert line.startswith(f"evomerge: error: config {config} is refused at line")


def test_a_recursive_alias_in_a_search_config_is_refused(fam, tmp_path: Path, capsys) -> None:
    config = with_strategy_block(search_yaml(tmp_path / "cfg", fam), ["  options: &o {again: *o}"])
    assert_refused(["search", str(config), "--check"], capsys,
                   f"config {config} is refused at line", *fam.values(), config)
    assert "alias *o refers to a node that contains it" in parse_error(config.read_text())


@pytest.mark.parametrize("tail,fragment", [
    ([*bomb(8), "parameters: {lambda: *a8}"], "its aliases expand to more than"),
    (["parameters: &p {lambda: 1.0, more: *p}"], "alias *p refers to a node that contains it"),
], ids=["alias bomb", "recursive alias"])
def test_hostile_aliases_in_a_recipe_are_refused_by_merge(tail, fragment, fam, tmp_path: Path, capsys) -> None:
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    recipe.write_text(recipe.read_text() + "\n".join(tail) + "\n")
    assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys, fragment, *fam.values(), recipe)
    assert not (tmp_path / "out").exists()


def test_nesting_too_deep_for_the_parser_is_one_line(fam, tmp_path: Path, capsys) -> None:
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    recipe.write_text(recipe.read_text() + "extra: " + "[" * 50_000 + "]" * 50_000 + "\n")
    assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys, "nests too deeply to be read",
                   *fam.values(), recipe)


def test_a_config_that_is_not_text_is_one_line(fam, tmp_path: Path, capsys) -> None:
    config = tmp_path / "cfg" / "search.yaml"
    config.parent.mkdir()
    config.write_bytes(b"name: \xff\xfe\n")
    assert_refused(["search", str(config), "--check"], capsys, "is not UTF-8 text", *fam.values(), config)


def test_aliases_within_the_bound_still_read_as_plain_yaml() -> None:
    """Anchors are ordinary YAML (shared options, say): only recursion and a blow-up are refused."""
    text = "\n".join([*bomb(3), "all: [*a3, *a3]"])
    data = parse_yaml(text, "test")
    assert len(data["all"]) == 2 and data["all"][0][0][0][0] == ["lol"] * 9
    with pytest.raises(EvomergeError, match="aliases expand to more than"):
        parse_yaml("\n".join([*bomb(5), "all: [*a5, *a5]"]), "test")  # 2 * 9**6 > 100,000


def test_a_hostile_front_matter_in_the_bases_card_is_read_as_no_license(tmp_path: Path, capsys) -> None:
    (tmp_path / "README.md").write_text("---\nlicense: &l [*l]\n---\n# base\n")
    assert declared_license(tmp_path) == {}
    err = capsys.readouterr().err
    assert "alias *l refers to a node that contains it" in err and "the exported card declares no license" in err


def parse_error(text: str) -> str:
    with pytest.raises(EvomergeError) as info:
        parse_yaml(text, "test")
    return str(info.value)
