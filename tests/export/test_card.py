"""The exported model card is ready for the hub: front matter, models by name, no local path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from evomerge.config.search import SourcesConfig
from evomerge.export.export import export_candidate
from evomerge.genome.space import GenomeSpace
from evomerge.run.log import RunLog

from .conftest import TASKS, export_config, fake_scores, synthetic_run


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
    (family["base"] / "README.md").write_text("---\nlicense: other\nlicense_name: tiny\nlicense_link: LICENSE\n"
                                              "---\n# base\n")
    meta = front_matter(exported_card(family, tmp_path, fake_executor))
    assert (meta["license"], meta["license_name"], meta["license_link"]) == ("other", "tiny", "LICENSE")



def test_the_card_states_the_gain_over_the_best_fixed_recipe(scored_family, fake_executor, tmp_path: Path) -> None:
    """The gain's value, derived from the fake scorer: held-out = 0.9 × calibration; a source alone scores
    0.9 × (0.25 + 0.6) on its own task, the normalizer; the best fixed recipe weighs both sources 1
    (TSV-M, task arithmetic, TIES, DARE-TIES: the first in table order is named), 0.9 × (0.25 + 0.6 − 0.2) on each
    task."""
    card = exported_card(scored_family, tmp_path, fake_executor)
    chosen = int(re.search(r"— candidate (\d+)", card)[1])
    cfg = export_config(scored_family)
    x = next(r.x for r in RunLog.open(tmp_path / "run").candidates() if r.index == chosen)
    held = fake_scores(GenomeSpace.for_config(cfg).to_recipe(x), TASKS, 0.9)
    ours = sum(held[t].value for t in TASKS) / len(TASKS) / (0.9 * 0.85)
    theirs = 0.9 * 0.65 / (0.9 * 0.85)
    stated = re.search(r"\*\*Gain over the best fixed recipe: ([+-]\d\.\d{3})\*\*", card)
    assert stated and abs(float(stated[1]) - (ours - theirs)) < 6e-4, (stated, ours - theirs)
    assert f"the best fixed recipe on held-out, TSV-M (α=1), {theirs:.3f}." in card
