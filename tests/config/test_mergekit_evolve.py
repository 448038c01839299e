"""mergekit-evolve configs (genome: + tasks:) read as search configs: every field maps, is refused, or warns."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from evomerge.cli import main
from evomerge.config.mergekit_evolve import EvolveConfig, EvolveGenome, EvolveTask, convert_text
from evomerge.config.schema import fields_of
from evomerge.config.search import load_config
from evomerge.errors import EvomergeError


def write_evolve(folder: Path, family: dict[str, Path], *, genome: dict[str, Any] | None = None, **top: Any) -> Path:
    """A mergekit-evolve config over ``family`` (absolute folders), ties over a and b, one task; changes on top."""
    data: dict[str, Any] = {
        "genome": {"models": [str(family["a"]), str(family["b"])], "merge_method": "ties",
                   "base_model": str(family["base"]), **(genome or {})},
        "tasks": ["tiny_rev"], "apply_chat_template": False, "fewshot_as_multiturn": False, **top,
    }
    path = folder / "evolve.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_genome_and_tasks_file_is_read_as_a_search_config(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family))
    assert cfg.name == "evolve" and cfg.sources.base == tiny_family["base"]
    assert cfg.sources.models == (tiny_family["a"], tiny_family["b"])
    assert cfg.strategy.name == "cmaes" and cfg.genome.methods == ("ties",)


def test_models_resolve_against_the_config_folder(tmp_path: Path, tiny_family) -> None:
    root = tiny_family["base"].parent
    path = write_evolve(root.parent, tiny_family,
                        genome={"models": [f"{root.name}/a"], "base_model": f"{root.name}/base"})
    try:
        assert load_config(path).sources.models == (tiny_family["a"],)
    finally:
        path.unlink()


def test_models_resolve_against_the_working_directory(tmp_path: Path, tiny_family, monkeypatch) -> None:
    monkeypatch.chdir(tiny_family["base"].parent)
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"models": ["a", "b"], "base_model": "base"}))
    assert cfg.sources.models == (tiny_family["a"], tiny_family["b"]) and cfg.sources.names == ()


def test_a_missing_model_is_one_error_naming_it(tmp_path: Path, tiny_family) -> None:
    path = write_evolve(tmp_path, tiny_family, genome={"models": [str(tiny_family["a"]), "nobody/missing-7b"]})
    with pytest.raises(EvomergeError, match=r"'genome.models\[1\]': model 'nobody/missing-7b' is not a folder .* "
                                            "nor in the Hugging Face cache"):
        load_config(path)


def fake_hub_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """``folder`` as the Hugging Face cache holds a downloaded repository (refs/main -> snapshots/<commit>)."""
    import shutil

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_hub_ids_are_found_in_the_hf_cache_and_kept_as_names(tmp_path: Path, tiny_family, monkeypatch) -> None:
    from huggingface_hub import constants

    fake_hub_cache(tmp_path / "hub", "org/model-a", tiny_family["a"])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"models": ["org/model-a", str(tiny_family["b"])]}))
    assert cfg.sources.models[0].parent.name == "snapshots" and (cfg.sources.models[0] / "config.json").is_file()
    assert cfg.sources.names == ("org/model-a", "b") and cfg.sources.base_name is None


def test_without_base_model_the_config_is_refused(tmp_path: Path, tiny_family) -> None:
    path = write_evolve(tmp_path, tiny_family, genome={"merge_method": "linear", "base_model": None})
    with pytest.raises(EvomergeError, match="field 'genome.base_model' is not supported: evomerge merges task vectors"):
        load_config(path)


@pytest.mark.parametrize("method, normalize", [("task_arithmetic", False), ("ties", True), ("dare_ties", True)])
def test_methods_keep_their_name_and_mergekit_evolves_normalize_default(tmp_path, tiny_family, method,
                                                                        normalize) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"merge_method": method}))
    assert cfg.genome.methods == (method,) and cfg.genome.parameters == {"normalize": normalize}


def test_normalize_given_wins_over_the_default(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"normalize": False}))
    assert cfg.genome.parameters == {"normalize": False}


def test_linear_is_normalized_task_arithmetic_with_a_warning(tmp_path: Path, tiny_family, capsys) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"merge_method": "linear"}))
    assert cfg.genome.methods == ("task_arithmetic",) and cfg.genome.parameters == {"normalize": True}
    assert "'genome.merge_method' linear is searched as task_arithmetic" in capsys.readouterr().err


@pytest.mark.parametrize("genome, fragment", [
    ({"merge_method": "slerp"}, "field 'genome.merge_method' is not supported"),
    ({"merge_method": "linear", "normalize": False}, "field 'genome.normalize' is not supported"),
    ({"merge_method": "della"}, "'genome.merge_method' must be one of task_arithmetic, ties, dare_ties, linear, slerp"),
    ({"filters": ["q_proj"]}, "field 'genome.filters' is not supported"),
    ({"tokenizer_source": "union"}, "field 'genome.tokenizer_source' is not supported"),
    ({"models": [{"model": "a", "lora": "l"}]}, "field 'genome.models[0].lora' is not supported"),
    ({"models": ["a+lora"]}, "field 'genome.models[0]' is not supported: 'a+lora' names a LoRA"),
    ({"models": [{"model": "a", "override_architecture": "X"}]}, "'genome.models[0].override_architecture'"),
    ({"layer_granularity": -1}, "field 'genome.layer_granularity' must be an integer >= 0"),
    ({"colour": "red"}, "unknown field 'colour' in mergekit-evolve config section 'genome'"),
])
def test_what_evomerge_cannot_do_alike_is_refused_naming_the_field(tmp_path, tiny_family, genome, fragment) -> None:
    with pytest.raises(EvomergeError) as e:
        load_config(write_evolve(tmp_path, tiny_family, genome=genome))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_limit_is_refused_with_what_to_do_instead(tmp_path: Path, tiny_family) -> None:
    with pytest.raises(EvomergeError, match="field 'limit' is not supported: evomerge scores every document"):
        load_config(write_evolve(tmp_path, tiny_family, limit=100))


@pytest.mark.parametrize("change, field_name", [
    ({"genome": {"smooth": True}}, "genome.smooth"), ({"random_init": True}, "random_init"),
    ({"shuffle": True}, "shuffle"),
])
def test_ignored_fields_warn_in_one_line_each(tmp_path, tiny_family, capsys, change, field_name) -> None:
    load_config(write_evolve(tmp_path, tiny_family, **change))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"evomerge: warning: mergekit-evolve config field '{field_name}' ignored")


def test_layer_granularity_zero_is_one_group_of_all_layers(tmp_path: Path, tiny_family) -> None:
    assert load_config(write_evolve(tmp_path, tiny_family)).genome.layer_granularity == 2  # tiny_family: 2 layers


def test_layer_granularity_is_layers_per_group(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"layer_granularity": 1}))
    assert cfg.genome.layer_granularity == 1


@pytest.mark.parametrize("allow, low", [(False, 0.0), (True, -1.0)])
def test_allow_negative_weights_sets_the_weight_genes_range(tmp_path, tiny_family, allow, low) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"allow_negative_weights": allow}))
    assert cfg.genome.bounds == {"weight": (low, 1.0)}


def test_filters_self_attn_and_mlp_split_genes_by_kind(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"filters": ["mlp", "self_attn"]}))
    assert cfg.genome.split_by_kind


def test_tokenizer_source_names_a_model_folder(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"tokenizer_source": str(tiny_family["b"])}))
    assert cfg.sources.tokenizer_source == tiny_family["b"]


def test_tokenizer_source_base_is_the_default(tmp_path: Path, tiny_family) -> None:
    cfg = load_config(write_evolve(tmp_path, tiny_family, genome={"tokenizer_source": "base"}))
    assert cfg.sources.tokenizer_source is None


def test_tasks_become_weighted_objectives_with_metric_and_filter(tmp_path: Path, tiny_family) -> None:
    tasks = ["tiny_rev", {"name": "tiny_dup", "weight": 0.25, "metric": "perplexity,none"},
             {"name": "x", "metric": "acc"}]
    cfg = load_config(write_evolve(tmp_path, tiny_family, tasks=tasks))
    got = [(o.task, o.metric, o.filter, o.weight, o.heldout_task) for o in cfg.objectives]
    assert got == [("tiny_rev", "acc", "none", 1.0, None), ("tiny_dup", "perplexity", "none", 0.25, None),
                   ("x", "acc", None, 1.0, None)]


def test_several_tasks_note_how_to_search_their_pareto_front(tmp_path: Path, tiny_family, capsys) -> None:
    load_config(write_evolve(tmp_path, tiny_family, tasks=["tiny_rev", "tiny_dup"]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evomerge: note: the 2 tasks are one weighted score")
    assert "strategy.name: nsga2" in lines[0]


def test_weighted_objectives_rank_candidates_as_mergekit_evolves_weighted_sum() -> None:
    from evomerge.strategies import make_strategy
    from evomerge.strategies.base import Evaluation

    weights, scores = [0.5, 2.0], [(0.9, 0.1), (0.2, 0.3), (0.5, 0.5), (0.0, 0.4)]
    strategy = make_strategy("cmaes", 2, 2, seed=0, weights=weights)
    ours = sorted(scores, key=lambda s: strategy.scalarize(Evaluation(s)))
    assert ours == sorted(scores, key=lambda s: sum(w * v for w, v in zip(weights, s, strict=True)))


def test_prompt_options_keep_mergekit_evolves_defaults(tmp_path: Path, tiny_family) -> None:
    path = write_evolve(tmp_path, tiny_family, num_fewshot=3)
    data = yaml.safe_load(path.read_text())
    del data["apply_chat_template"], data["fewshot_as_multiturn"]
    path.write_text(yaml.safe_dump(data))
    scoring = load_config(path).scoring
    assert (scoring.num_fewshot, scoring.apply_chat_template, scoring.fewshot_as_multiturn) == (3, True, True)


def test_a_bad_task_entry_names_its_field(tmp_path: Path, tiny_family) -> None:
    with pytest.raises(EvomergeError, match=r"'tasks\[1\].weight' must be a number >= 0"):
        load_config(write_evolve(tmp_path, tiny_family, tasks=["a", {"name": "b", "weight": -1}]))


def mergekit_fields(model: Any) -> dict[str, Any]:
    return {name: info.default for name, info in model.model_fields.items()}


def test_the_reader_knows_every_field_of_mergekit_evolve_with_its_default() -> None:
    evo = pytest.importorskip("mergekit.evo.config", reason="mergekit (a dev-only dependency) is not installed")
    from pydantic_core import PydanticUndefined

    for ours, theirs in ((EvolveConfig, evo.EvolMergeConfiguration), (EvolveGenome, evo.ModelGenomeDefinition),
                         (EvolveTask, evo.TaskConfiguration)):
        mine = {f.name: f.default for f, _ in fields_of(ours).values()}
        want = {k: (dataclasses.MISSING if v is PydanticUndefined else v) for k, v in mergekit_fields(theirs).items()}
        assert mine == want, ours.__name__


def test_convert_then_load_gives_the_same_config(tmp_path: Path, tiny_family) -> None:
    path = write_evolve(tmp_path, tiny_family, num_fewshot=2, tasks=["tiny_rev", {"name": "tiny_dup", "weight": 2}],
                        genome={"filters": ["self_attn", "mlp"], "layer_granularity": 1,
                                "tokenizer_source": str(tiny_family["a"])})
    native = tmp_path / "native.yaml"
    native.write_text(convert_text(path, task_path=tmp_path))
    direct = load_config(path)
    direct = dataclasses.replace(direct, scoring=dataclasses.replace(direct.scoring, task_path=tmp_path))
    assert load_config(native) == dataclasses.replace(direct, name="evolve")


def test_convert_writes_every_field_with_a_comment(tmp_path: Path, tiny_family) -> None:
    text = convert_text(write_evolve(tmp_path, tiny_family))
    cfg = load_config(tmp_path / "evolve.yml")
    for section in ("sources", "genome", "scoring", "strategy", "budget", "execution"):
        for name in fields_of(type(getattr(cfg, section))):
            line = next(line for line in text.splitlines() if line.startswith(f"  {name}:"))
            assert " # " in line, line
    assert next(line for line in text.splitlines() if line.startswith("seed:")).count(" # ") == 1


def test_convert_refuses_a_native_config_in_one_line(tmp_path: Path, capsys) -> None:
    native = tmp_path / "native.yaml"
    native.write_text("name: x\nsources: {base: b, models: [a]}\nobjectives: [{task: t}]\n")
    assert main(["config", "convert", str(native)]) == 2
    assert "is not a mergekit-evolve config" in capsys.readouterr().err


def test_search_check_accepts_a_mergekit_evolve_config(tmp_path: Path, scored_family, capsys) -> None:
    path = write_evolve(tmp_path, scored_family, tasks=["tiny_rev", {"name": "tiny_dup", "weight": 0.5}])
    assert main(["search", str(path), "--check", "--task-path", str(scored_family["tasks"])]) == 0
    assert capsys.readouterr().out.startswith("config OK: evolve, 2 sources")


def test_search_plan_accepts_a_mergekit_evolve_config(tmp_path: Path, scored_family, capsys) -> None:
    assert main(["search", str(write_evolve(tmp_path, scored_family)), "--plan"]) == 0
    assert capsys.readouterr().out.strip()


def test_convert_keeps_the_model_paths_as_written_next_to_the_config(tiny_family) -> None:
    root = tiny_family["base"].parent
    path = write_evolve(root.parent, tiny_family,
                        genome={"models": [f"{root.name}/a"], "base_model": f"{root.name}/base"})
    try:
        text = convert_text(path)
    finally:
        path.unlink()
    assert f"  base: {root.name}/base " in text and f"  models: [{root.name}/a] " in text


def test_search_refuses_a_missing_model_in_one_line_with_exit_code_2(tmp_path: Path, tiny_family, capsys) -> None:
    path = write_evolve(tmp_path, tiny_family, genome={"models": ["nobody/missing-7b"]})
    assert main(["search", str(path), "--check"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evomerge: error: mergekit-evolve config field 'genome.models[0]'")
