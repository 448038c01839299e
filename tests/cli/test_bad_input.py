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
    GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=16, n_layer=2, n_head=2, n_positions=64)).save_pretrained(root / "gpt2")
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


CASES = {
    "missing recipe file": (lambda t, f, o: ["merge", str(t / "nope.yaml"), "--out", str(o)], "not found"),
    "malformed yaml": (lambda t, f, o: ["merge", str(_text(t, "method: [ties\n")), "--out", str(o)], "not valid YAML"),
    "recipe not a mapping": (lambda t, f, o: ["merge", str(_text(t, "- ties\n")), "--out", str(o)], "mapping"),
    "unknown method": (lambda t, f, o: ["merge", str(family_recipe(t, f, method="tiez")), "--out", str(o)], "unknown merge method 'tiez'"),
    "unknown recipe key": (lambda t, f, o: ["merge", str(family_recipe(t, f, methd="ties")), "--out", str(o)], "unknown field 'methd' in the recipe"),
    "weight list length wrong": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, groups={"layers.0": {"sources": [{"weight": 1.0}]}})), "--out", str(o)],
        "one per source"),
    "density outside (0,1]": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, sources=[
            {"model": "A", "parameters": {"weight": 1.0, "density": 1.5}},
            {"model": "B", "parameters": {"weight": 1.0, "density": 0.5}}])), "--out", str(o)],
        "'density' = 1.5 is outside (0, 1]"),
    "bad dtype": (lambda t, f, o: ["merge", str(family_recipe(t, f, dtype="float8")), "--out", str(o)], "recipe field 'dtype' must be one of float32, float16, bfloat16, float64, got 'float8'"),
    "unknown layer group": (
        lambda t, f, o: ["merge", str(family_recipe(t, f, groups={"layers.9": {"parameters": {"lambda": 1.0}}})), "--out", str(o)],
        "layers.9"),
    "missing source folder": (
        lambda t, f, o: ["merge", str(family_recipe(t, {**f, "b": t / "missing"})), "--out", str(o)], "missing"),
    "missing --out": (lambda t, f, o: ["merge", str(family_recipe(t, f))], "--out"),
    "unknown subcommand": (lambda t, f, o: ["mergee"], "invalid choice"),
    "evaluate missing model": (lambda t, f, o: ["evaluate", str(t / "nomodel"), "--tasks", "x"], "no config.json"),
    "evaluate unknown task": (
        lambda t, f, o: ["evaluate", str(f["a"]), "--tasks", "no_such_task", "--task-path", str(t)], "unknown lm-eval task 'no_such_task'"),
    "unknown zoo arch": (lambda t, f, o: ["zoo", "build", str(o), "--arch", "transformer-xl"], "transformer-xl"),
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
def test_incompatible_source_is_refused_by_name(odd: str, fragment: str, tmp_path: Path, tiny_family, odd_models, capsys) -> None:
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
