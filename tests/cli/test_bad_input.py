"""Every user mistake: one line on stderr, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from evomerge.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory, tiny_family: dict[str, Path]) -> dict[str, Path]:
    """Folders that must be refused next to tiny_family: other architecture, other shape, pickle only."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("odd")
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=2, n_head=2,
                               n_positions=64)).save_pretrained(root / "gpt2")
    wide = LlamaConfig(vocab_size=32, hidden_size=24, intermediate_size=32, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False)
    LlamaForCausalLM(wide).save_pretrained(root / "wide")
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_family["a"] / "config.json").read_text())
    model = LlamaForCausalLM.from_pretrained(tiny_family["a"])
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    return {"gpt2": root / "gpt2", "wide": root / "wide", "pickled": pickled}


def recipe(tmp_path: Path, **overrides) -> Path:
    data = {"method": "ties", "base": "BASE", "sources": [
        {"model": "A", "parameters": {"weight": 1.0, "density": 0.5}},
        {"model": "B", "parameters": {"weight": 1.0, "density": 0.5}}]}
    data.update(overrides)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    err = capsys.readouterr().err
    return code, err


def assert_refused(argv: list[str], capsys: pytest.CaptureFixture[str], out: Path, fragment: str) -> None:
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert not out.exists() or out.name == "occupied", f"{out} was written"


def family_recipe(tmp_path: Path, fam: dict[str, Path], **overrides) -> Path:
    data = yaml.safe_load(recipe(tmp_path, **overrides).read_text())
    text = yaml.safe_dump(data).replace("BASE", str(fam["base"])).replace("A", str(fam["a"]), 1)
    text = text.replace("model: B", f"model: {fam['b']}")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


REGMEAN = {"method": "regmean", "sources": [{"model": "A"}, {"model": "B"}], "base": None}
FISHER = {**REGMEAN, "method": "fisher"}
CASES = {
    "missing recipe file": (lambda t, f, o: ["merge", str(t / "nope.yaml"), "--out", str(o)], "not found"),
    "malformed yaml": (lambda t, f, o: ["merge", str(_text(t, "method: [ties\n")), "--out", str(o)], "not valid YAML"),
    "recipe not a mapping": (lambda t, f, o: ["merge", str(_text(t, "- ties\n")), "--out", str(o)], "mapping"),
    "unknown method": (lambda t, f, o: ["merge", str(family_recipe(t, f, method="tiez")), "--out", str(o)],
                       "unknown merge method 'tiez'"),
    "unknown recipe key": (lambda t, f, o: ["merge", str(family_recipe(t, f, methd="ties")), "--out", str(o)],
                           "unknown field 'methd' in the recipe"),
    "weight list length wrong": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, groups={"layers.0": {"sources": [{"weight": 1.0}]}})),
                         "--out", str(o)],
        "one per source"),
    "density outside (0,1]": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, sources=[
            {"model": "A", "parameters": {"weight": 1.0, "density": 1.5}},
            {"model": "B", "parameters": {"weight": 1.0, "density": 0.5}}])), "--out", str(o)],
        "'density' = 1.5 is outside (0, 1]"),
    "bad dtype": (lambda t, f, o: ["merge", str(family_recipe(t, f, dtype="float8")), "--out", str(o)],
                  "recipe field 'dtype' must be one of float32, float16, bfloat16, float64, got 'float8'"),
    "unknown layer group": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, groups={"layers.9": {"parameters": {"lambda": 1.0}}})),
                         "--out", str(o)],
        "layers.9"),
    "missing source folder": (
        lambda t, f, o: ["merge", str(family_recipe(t, {**f, "b": t / "missing"})), "--out", str(o)], "missing"),
    "missing --out": (lambda t, f, o: ["merge", str(family_recipe(t, f))], "--out"),
    "unknown subcommand": (lambda t, f, o: ["mergee"], "invalid choice"),
    "evaluate missing model": (lambda t, f, o: ["evaluate", str(t / "nomodel"), "--tasks", "x"], "no config.json"),
    "evaluate unknown task": (
        lambda t, f, o: ["evaluate", str(f["a"]), "--tasks", "no_such_task", "--task-path", str(t)],
        "unknown lm-eval task 'no_such_task'"),
    "unknown zoo arch": (lambda t, f, o: ["zoo", "build", str(o), "--arch", "transformer-xl"], "transformer-xl"),
    "regmean without statistics": (lambda t, f, o: ["merge", str(family_recipe(t, f, **REGMEAN)), "--out", str(o)],
                                   "method 'regmean' needs the sources' input Gram matrices"),
    "regmean statistics missing": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, **REGMEAN, statistics=str(t / "stats"))), "--out", str(o)],
        "no statistics for source 0"),
    "output inside the statistics folder": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, **REGMEAN, statistics=str(o.parent))), "--out", str(o)],
        "lies inside the statistics folder"),
    "fisher without statistics": (lambda t, f, o: ["merge", str(family_recipe(t, f, **FISHER)), "--out", str(o)],
                                  "method 'fisher' needs the sources' diagonal Fisher information"),
    "fisher statistics missing": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, **FISHER, statistics=str(t / "stats"))), "--out", str(o)],
        "expected a readable fisher-source0.safetensors"),
    "fisher weight negative": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, **{**FISHER, "sources": [
            {"model": "A", "parameters": {"weight": -1.0}}, {"model": "B", "parameters": {"weight": 1.0}}]})),
                         "--out", str(o)],
        "fisher: 'weight' = -1.0 is outside [0, inf]"),
    "statistics for a recipe without a method that takes them": (
        lambda t, f, o: ["statistics", str(family_recipe(t, f)), "--tasks", "x", "--out", str(o)],
        "the recipe's methods take no calibration statistics"),
    "statistics empty tasks": (lambda t, f, o: ["statistics", str(family_recipe(t, f)), "--tasks", ",", "--out",
                                                str(o)],
                               "--tasks is empty"),
    "statistics into a model folder": (
        lambda t, f, o: ["statistics", str(family_recipe(t, f)), "--tasks", "x", "--out", str(f["a"] / "stats")],
        "lies inside the model folder"),
}


def _text(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case: str, tmp_path: Path, tiny_family, capsys) -> None:
    make_argv, fragment = CASES[case]
    out = tmp_path / "out"
    assert_refused(make_argv(tmp_path, tiny_family, out), capsys, out, fragment)


@pytest.mark.parametrize("odd,fragment", [("gpt2", "architecture"), ("wide", "shape"), ("pickled", "pickle")])
def test_incompatible_source_is_refused_by_name(odd: str, fragment: str, tmp_path: Path, tiny_family, odd_models,
                                                capsys) -> None:
    out = tmp_path / "out"
    path = family_recipe(tmp_path, {**tiny_family, "b": odd_models[odd]})
    code, err = run_cli(["merge", str(path), "--out", str(out)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert fragment in err.lower(), err
    assert not out.exists()


def test_non_empty_output_folder_is_kept_without_force(tmp_path: Path, tiny_family, capsys) -> None:
    out = tmp_path / "occupied"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_refused(["merge", str(family_recipe(tmp_path, tiny_family)), "--out", str(out)], capsys, out, "--force")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_console_script_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "evomerge.cli", "merge", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"evomerge: error: recipe file not found: {tmp_path / 'nope.yaml'}"]


# --- search configs: every problem is found before a run folder exists ---------------------------------------------


def search_config(tmp_path: Path, fam: dict[str, Path], **changes) -> Path:
    """A valid search config over scored_family, with ``changes`` ('section.key': value, or 'section': value)."""
    data = {
        "name": "bad", "seed": 0,
        "sources": {"base": str(fam["base"]), "models": [str(fam["a"]), str(fam["b"])]},
        "genome": {"methods": ["ties"]},
        "scoring": {"task_path": str(fam["tasks"])},
        "objectives": [{"task": "tiny_rev", "heldout_task": "tiny_rev_heldout", "metric": "acc"}],
        "strategy": {"name": "cmaes"}, "budget": {"max_evals": 4},
    }
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _objective(**kw) -> list[dict]:
    return [{"task": "tiny_rev", "heldout_task": "tiny_rev_heldout", **kw}]


SEARCH_CASES = {
    "unknown top-level field": ({"budgett": {}}, "unknown field 'budgett' in the config"),
    "unknown genome field": ({"genome.paramters": {}}, "unknown field 'paramters' in config section 'genome'"),
    "unknown dtype": ({"genome.dtype": "float8"}, "config field 'genome.dtype' must be one of"),
    "bound of no gene": ({"genome.bounds": {"wieght": [0, 1]}},
                         "config field 'genome.bounds.wieght': no per-source parameter"),
    "reversed bounds": ({"genome.bounds": {"weight": [2, 0]}},
                        "config field 'genome.bounds.weight' must be [low, high]"),
    "bound outside the domain": ({"genome.bounds": {"density": [0.0, 1.5]}},
                                 "'genome.bounds.density': 0 is outside (0, 1]"),
    "bound outside one method's domain": ({"genome.methods": ["fisher", "ties"], "genome.bounds": {"weight": [-1, 1]}},
                                          "'genome.bounds.weight': -1 is outside [0, inf], which fisher takes"),
    "parameter no method takes": ({"genome.parameters": {"lamda": 1.0}},
                                  "'genome.parameters.lamda': none of ties takes"),
    "parameter of the wrong type": ({"genome.parameters": {"lambda": "big"}}, "ties: 'lambda' must be a number"),
    "unknown method": ({"genome.methods": ["tiez"]}, "unknown merge method 'tiez'"),
    "method that cannot be searched": ({"genome.methods": ["slerp"]}, "'slerp' cannot be searched per layer"),
    "empty method list": ({"genome.methods": []}, "config field 'genome.methods' must be a non-empty list"),
    "unknown strategy": ({"strategy.name": "annealing"}, "unknown strategy 'annealing'"),
    "unknown strategy option": ({"strategy.options": {"sigma": 0.3}},
                                "unknown field 'sigma' in config section 'strategy.options'"),
    "strategy option out of range": ({"strategy.options": {"popsize": 1}},
                                     "config field 'strategy.options.popsize' must be an integer >= 2"),
    "negative objective weight": ({"objectives": _objective(weight=-1)},
                                  "config field 'objectives[0].weight' must be a number >= 0"),
    "objective weights summing to zero": ({"objectives": _objective(weight=0)},
                                          "'objectives' must have weights with a positive sum"),
    "unknown task": ({"objectives": [{"task": "tiny_rvs"}]}, "unknown lm-eval task 'tiny_rvs'"),
    "unknown held-out task": ({"objectives": _objective(heldout_task="tiny_rev_hold")},
                              "unknown lm-eval task 'tiny_rev_hold'"),
    "unknown metric": ({"objectives": _objective(metric="accuracy")},
                       "'objectives[0].metric': task 'tiny_rev' has no metric 'accuracy'"),
    "unknown search metric": ({"objectives": _objective(search_metric="loglik")},
                              "'objectives[0].search_metric': task 'tiny_rev' has no metric 'loglik'"),
    "multiturn few-shot without a chat": ({"scoring.fewshot_as_multiturn": True},
                                          "config field 'scoring.fewshot_as_multiturn' needs apply_chat_template"),
    "chat template the tokenizer lacks": ({"scoring.apply_chat_template": True},
                                          "'scoring.apply_chat_template': the tokenizer of"),
    "negative few-shot count": ({"scoring.num_fewshot": -1},
                                "config field 'scoring.num_fewshot' must be an integer >= 0"),
    "unknown filter": ({"objectives": _objective(filter="strict")},
                       "'objectives[0].filter': task 'tiny_rev' has no filter 'strict'"),
    "bad direction": ({"objectives": _objective(direction="up")},
                      "config field 'objectives[0].direction' must be one of max, min"),
    "no objectives": ({"objectives": []}, "config field 'objectives' must be a non-empty list"),
    "missing task folder": ({"scoring.task_path": "/no/such/tasks"}, "task folder not found: /no/such/tasks"),
    "missing base model": ({"sources.base": "/no/such/base"}, "model folder /no/such/base does not exist"),
    "no source models": ({"sources.models": []}, "config field 'sources.models' must be a non-empty list"),
    "several local workers": ({"execution.workers": 2}, "the local backend runs one worker"),
    "fewer in flight than workers": ({"execution": {"backend": "ray", "workers": 2, "in_flight": 1}},
                                     "'execution.in_flight' (1) must be >= execution.workers"),
    "unknown device": ({"execution.device": "gpu"}, "config field 'execution.device' must be cpu, cuda, cuda:N or mps"),
    "zero budget": ({"budget.max_evals": 0}, "config field 'budget.max_evals' must be an integer >= 1, got 0"),
    "negative seed": ({"seed": -1}, "config field 'seed' must be an integer >= 0, got -1"),
    "string where a number goes": ({"scoring.batch_size": "64"},
                                   "config field 'scoring.batch_size' must be an integer >= 1, got '64'"),
}


@pytest.mark.parametrize("case", sorted(SEARCH_CASES))
def test_bad_search_config_is_one_line_exit_2_and_creates_no_run_folder(case: str, tmp_path: Path, scored_family,
                                                                        capsys) -> None:
    changes, fragment = SEARCH_CASES[case]
    run_dir = tmp_path / "run"
    assert_refused(["search", str(search_config(tmp_path, scored_family, **changes)), "--run-dir", str(run_dir)],
                   capsys, run_dir, fragment)
    assert [p.name for p in tmp_path.iterdir()] == ["search.yaml"]  # nothing else written, not even a temp folder


@pytest.mark.parametrize("odd,fragment", [("gpt2", "model_type"), ("wide", "shape")])
def test_incompatible_source_in_a_config_is_refused_before_the_run_folder(odd, fragment, tmp_path, scored_family,
                                                                          odd_models, capsys) -> None:
    path = search_config(tmp_path, scored_family, **{"sources.models": [str(scored_family["a"]), str(odd_models[odd])]})
    assert_refused(["search", str(path), "--run-dir", str(tmp_path / "run")], capsys, tmp_path / "run", fragment)


@pytest.fixture
def finished_run(tmp_path: Path, scored_family, capsys) -> Path:
    run_dir = tmp_path / "done"
    assert main(["search", str(search_config(tmp_path, scored_family)), "--run-dir", str(run_dir), "--quiet"]) == 0
    capsys.readouterr()
    return run_dir


RUN_CASES = {
    "search into a folder that holds a run": (lambda t, r: ["search", str(t / "search.yaml"), "--run-dir", str(r)],
                                              "already holds a run"),
    "resume of a folder that is no run": (lambda t, r: ["resume", str(t)], "is not a run folder"),
    "resume with a budget of zero": (lambda t, r: ["resume", str(r), "--max-evals", "0"], "--max-evals must be >= 1"),
    "export of a candidate that does not exist": (lambda t, r: ["export", str(r), "--out", str(t / "m"), "--pick",
                                                                "99"], "no candidate 99"),
    "export with an unknown pick rule": (lambda t, r: ["export", str(r), "--out", str(t / "m"), "--pick", "best"],
                                         "--pick must be"),
    "status of a missing folder": (lambda t, r: ["status", str(t / "nowhere")], "is not a run folder"),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_bad_run_command_is_one_line_exit_2_and_leaves_the_run_as_it_was(case: str, tmp_path: Path, finished_run: Path,
                                                                         capsys) -> None:
    before = (finished_run / "log.jsonl").read_bytes()
    assert_refused(RUN_CASES[case][0](tmp_path, finished_run), capsys, tmp_path / "m", RUN_CASES[case][1])
    assert (finished_run / "log.jsonl").read_bytes() == before


def test_a_second_session_on_a_live_run_is_refused(tmp_path: Path, finished_run: Path, capsys) -> None:
    from evomerge.run.log import RunLog

    before = (finished_run / "log.jsonl").read_bytes()
    with RunLog.open(finished_run).session():  # a search still running on this folder
        assert_refused(["resume", str(finished_run), "--max-evals", "6"], capsys, tmp_path / "m",
                       "in use by another evomerge session")
        assert_refused(["export", str(finished_run), "--out", str(tmp_path / "m")], capsys, tmp_path / "m",
                       "in use by another")
    assert (finished_run / "log.jsonl").read_bytes() == before


def test_evaluate_with_a_chat_template_the_tokenizer_lacks(tmp_path: Path, scored_family, capsys) -> None:
    argv = ["evaluate", str(scored_family["a"]), "--tasks", "tiny_rev", "--task-path", str(scored_family["tasks"]),
            "--apply-chat-template"]
    assert_refused(argv, capsys, tmp_path / "out", "has no chat template")
