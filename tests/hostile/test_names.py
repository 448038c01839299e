"""A run name is a name (never a path), and a config that lists a model twice is refused when it is checked."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize("name", ["../../escaped", "ABSOLUTE", "team/run", "..", "."])
def test_a_run_name_that_is_a_path_is_refused(refused, config_file, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              name: str) -> None:
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    config = config_file(name=str(tmp_path / "absolute") if name == "ABSOLUTE" else name)
    line = refused(["search", str(config)], "config field 'name' must be a plain name", tmp_path)  # nothing made
    assert "--run-dir" in line


def test_a_model_listed_twice_is_refused(refused, config_file, family) -> None:
    config = config_file(sources={"base": str(family["base"]), "models": [str(family["a"]), str(family["b"]),
                                                                          str(family["a"])]})
    refused(["search", str(config), "--check"], "'sources.models[2]' is sources.models[0] again", config,
            *family.values())


def test_the_base_listed_as_a_model_is_refused(refused, config_file, family) -> None:
    config = config_file(sources={"base": str(family["base"]), "models": [str(family["a"]), str(family["base"])]})
    refused(["search", str(config), "--check"], "'sources.models[1]' is sources.base again", config, *family.values())


def test_a_model_listed_twice_through_a_link_is_refused(refused, config_file, family, tmp_path: Path) -> None:
    (tmp_path / "a-again").symlink_to(family["a"])
    config = config_file(sources={"base": str(family["base"]), "models": [str(family["a"]), str(tmp_path / "a-again")]})
    refused(["search", str(config), "--check"], "is sources.models[0] again", config, *family.values())
