"""The exported model card is ready for the hub: front matter, models by name, no local path."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from evomerge.config.search import SourcesConfig
from evomerge.export.export import export_candidate

from .conftest import export_config, synthetic_run


def exported_card(family: dict[str, Path], tmp_path: Path, fake_executor, **cfg) -> str:
    run = synthetic_run(tmp_path / "run", export_config(family, **cfg), n=6)
    export_candidate(run.root, tmp_path / "model", executor_factory=fake_executor, quiet=True)
    return (tmp_path / "model" / "README.md").read_text()


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_front_matter_names_every_merged_model_and_the_relation(scored_family, fake_executor, tmp_path: Path) -> None:
    meta = front_matter(exported_card(scored_family, tmp_path, fake_executor))
    assert meta["base_model"] == ["base", "a", "b"]  # folder names: nothing was configured
    assert meta["base_model_relation"] == "merge" and meta["library_name"] == "transformers"
    assert {"merge", "evomerge", "mergekit"} <= set(meta["tags"])
    assert "license" not in meta  # the base declares none


def test_the_card_holds_no_local_path(scored_family, fake_executor, tmp_path: Path) -> None:
    card = exported_card(scored_family, tmp_path, fake_executor)
    root = str(scored_family["base"].parent)
    assert root not in card and str(tmp_path) not in card
    assert "| base | `base` |" in card and "evomerge export RUN_DIR --out MODEL_DIR" in card


def test_configured_names_name_the_models(scored_family, fake_executor, tmp_path: Path) -> None:
    f = scored_family
    sources = SourcesConfig(f["base"], (f["a"], f["b"]), base_name="org/base", names=("org/a", "org/b"))
    card = exported_card(f, tmp_path, fake_executor, sources=sources)
    assert front_matter(card)["base_model"] == ["org/base", "org/a", "org/b"]
    assert "| source 1 | `org/b` |" in card and "weight · org/a" in card
    mk = yaml.safe_load((tmp_path / "model" / "mergekit.yaml").read_text())
    assert mk["base_model"] == "org/base"


def test_the_bases_declared_license_is_carried(scored_family, fake_executor, tmp_path: Path) -> None:
    family = {k: shutil.copytree(scored_family[k], tmp_path / k) for k in ("base", "a", "b")}
    (family["base"] / "README.md").write_text("---\nlicense: other\nlicense_name: tiny\nlicense_link: LICENSE\n---\n# base\n")
    meta = front_matter(exported_card(family, tmp_path, fake_executor))
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "tiny", "LICENSE")



def test_the_card_states_the_gain_over_the_best_fixed_recipe(scored_family, fake_executor, tmp_path: Path) -> None:
    card = exported_card(scored_family, tmp_path, fake_executor)
    assert "**Gain over the best fixed recipe: " in card and "the best fixed recipe on held-out, " in card
