"""Search config: typed sections, every mistake names its field, paths resolve against the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from evomerge.config.search import SourcesConfig, config_from_yaml, load_config
from evomerge.errors import EvomergeError


def write_config(tmp_path: Path, family: dict[str, Path], **changes) -> Path:
    data = {
        "name": "t",
        "sources": {"base": str(family["base"]), "models": [str(family["a"]), str(family["b"])]},
        "objectives": [{"task": "t1", "heldout_task": "t1_h"}],
        "strategy": {"name": "random"},
        "budget": {"max_evals": 3},
    }
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data.setdefault(section, {})[key] = value
        else:
            data[section] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sections_mirror_the_yaml(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_config(tmp_path, tiny_family))
    assert cfg.sources.models == (tiny_family["a"], tiny_family["b"])
    assert cfg.budget.max_evals == 3 and cfg.strategy.name == "random" and cfg.execution.in_flight == 4
    assert cfg.objectives[0].task_for("heldout") == "t1_h"


def test_resolved_form_reads_back_equal(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_config(tmp_path, tiny_family))
    assert config_from_yaml(cfg.to_yaml()) == cfg


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, tiny_family) -> None:
    (tmp_path / "models").symlink_to(tiny_family["base"].parent)
    path = write_config(tmp_path, tiny_family, sources={"base": "models/base", "models": ["models/a"]})
    assert load_config(path).sources.base == (tmp_path / "models" / "base").resolve()


def test_the_name_defaults_to_the_file_name(tmp_path: Path, tiny_family) -> None:
    path = write_config(tmp_path, tiny_family)
    data = yaml.safe_load(path.read_text())
    del data["name"]
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).name == "c"


def test_cli_overrides_are_checked_like_the_file(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_config(tmp_path, tiny_family))
    assert cfg.override(**{"budget.max_evals": 7, "seed": None}).budget.max_evals == 7
    with pytest.raises(EvomergeError, match=r"config field 'execution\.workers' must be an integer >= 1, got 0"):
        cfg.override(**{"execution.workers": 0})


def test_overrides_reach_top_level_fields(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_config(tmp_path, tiny_family)).override(**{"seed": 5, "strategy.name": "random"})
    assert (cfg.seed, cfg.strategy.name) == (5, "random")


@pytest.mark.parametrize("changes,fragment", [
    ({"budget__max_evals": 0}, "config field 'budget.max_evals' must be an integer >= 1, got 0"),
    ({"execution__backend": "slurm"}, "config field 'execution.backend' must be one of local, ray, got 'slurm'"),
    ({"objectives": []}, "config field 'objectives' must be a non-empty list"),
    ({"genome__bounds": {"weight": [2, 0]}},
     "config field 'genome.bounds.weight' must be [low, high] with low <= high"),
    ({"budgett": {}}, "unknown field 'budgett' in the config"),
    ({"genome__dtype": "float8"}, "config field 'genome.dtype' must be one of float32, float16, bfloat16, float64"),
    ({"genome__paramters": {}}, "unknown field 'paramters' in config section 'genome'"),
    ({"execution__device": "gpu"}, "config field 'execution.device' must be cpu, cuda, cuda:N or mps"),
    ({"objectives": [{"task": "t1", "weight": 0}]}, "config field 'objectives' must have weights with a positive sum"),
    ({"objectives": [{"task": "t1", "direction": "up"}]},
     "config field 'objectives[0].direction' must be one of max, min"),
    ({"budget__max_minutes": -1}, "config field 'budget.max_minutes' must be a number > 0"),
    ({"seed": 1.5}, "config field 'seed' must be an integer >= 0"),
    ({"scoring__fewshot_as_multiturn": True},
     "config field 'scoring.fewshot_as_multiturn' needs apply_chat_template: true"),
    ({"execution__memory_budget": "lots"}, "config field 'execution.memory_budget' must be a size such as '64GB'"),
    ({"execution__trackers": [{"library": "mlflow"}]},
     "config field 'execution.trackers[0].library' must be one of wandb, trackio, got 'mlflow'"),
    ({"execution__trackers": [{"library": "trackio", "entity": "me"}]},
     "config field 'execution.trackers[0].entity' is a wandb option; trackio writes locally to TRACKIO_DIR"),
    ({"execution__trackers": [{"library": "wandb"}, {"library": "wandb", "project": "b"}]},
     "config field 'execution.trackers' must name each library once, got ['wandb', 'wandb']"),
])
def test_mistakes_name_the_field(tmp_path: Path, tiny_family, changes, fragment) -> None:
    with pytest.raises(EvomergeError, match=fragment.replace(".", r"\.").replace("(", r"\(").replace("[", r"\[")):
        load_config(write_config(tmp_path, tiny_family, **changes))


def test_models_are_published_under_their_folder_names_unless_named(tmp_path: Path, tiny_family) -> None:
    sources = {"base": str(tiny_family["base"]), "models": [str(tiny_family["a"]), str(tiny_family["b"])]}
    assert (list(load_config(write_config(tmp_path, tiny_family, sources=sources)).sources.labels().values())
            == ["base", "a", "b"])
    named = load_config(write_config(tmp_path, tiny_family,
                                     sources={**sources, "base_name": "org/base", "names": ["org/a", "org/b"]}))
    assert named.sources.labels() == {tiny_family["base"]: "org/base", tiny_family["a"]: "org/a",
                                      tiny_family["b"]: "org/b"}


def test_folders_sharing_a_name_are_told_apart_by_their_parents() -> None:
    sources = SourcesConfig(Path("/x/base"), (Path("/x/a/final"), Path("/y/b/final")))
    assert list(sources.labels().values()) == ["x/base", "a/final", "b/final"]


@pytest.mark.parametrize("names,fragment", [
    (["org/a"], "config field 'sources.names' must give one name per model (2), got 1"),
    (["org/a", "org/a"], "config field 'sources.names' must name different models differently"),
])
def test_source_name_mistakes_name_the_field(tmp_path: Path, tiny_family, names, fragment) -> None:
    sources = {"base": str(tiny_family["base"]), "models": [str(tiny_family["a"]), str(tiny_family["b"])],
               "names": names}
    with pytest.raises(EvomergeError, match=re.escape(fragment)):
        load_config(write_config(tmp_path, tiny_family, sources=sources))


def with_tokenizer(family: dict[str, Path], tokenizer_source: str) -> dict:
    """Sources: the base and model 'a', with scoring's tokenizer from ``tokenizer_source``."""
    source = str(family[tokenizer_source])
    return {"base": str(family["base"]), "models": [str(family["a"])], "tokenizer_source": source}


def test_a_tokenizer_source_that_is_neither_the_base_nor_a_model_is_refused(tmp_path: Path, tiny_family) -> None:
    fragment = "config field 'sources.tokenizer_source' must be the base or one of sources.models"
    with pytest.raises(EvomergeError, match=re.escape(fragment)):
        load_config(write_config(tmp_path, tiny_family, sources=with_tokenizer(tiny_family, "b")))


def test_a_tokenizer_source_among_the_models_is_taken(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_config(tmp_path, tiny_family, sources=with_tokenizer(tiny_family, "a")))
    assert cfg.sources.tokenizer_folder == tiny_family["a"]


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EvomergeError, match=re.escape(f"config file not found: {tmp_path / 'nope.yaml'}")):
        load_config(tmp_path / "nope.yaml")


def test_a_yaml_syntax_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("name: t\nsources: [base\n")
    with pytest.raises(EvomergeError, match=re.escape(f"config {path} is not valid YAML at line 3")):
        load_config(path)


def test_a_config_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("- name: t\n")
    with pytest.raises(EvomergeError, match=re.escape(f"config {path} must be a YAML mapping of keys to values")):
        load_config(path)


def test_trackers_are_off_unless_configured_and_their_dir_resolves_against_the_file(tmp_path: Path,
                                                                                    tiny_family) -> None:
    assert load_config(write_config(tmp_path, tiny_family)).execution.trackers == ()
    cfg = load_config(write_config(tmp_path, tiny_family, execution__trackers=[
        {"library": "wandb", "project": "p", "mode": "offline", "dir": "tracking"}, {"library": "trackio"}]))
    wandb, trackio = cfg.execution.trackers
    assert (wandb.project, wandb.mode, wandb.dir) == ("p", "offline", tmp_path / "tracking")
    assert (trackio.library, trackio.project) == ("trackio", "evomerge")
