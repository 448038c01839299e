"""The CLI path from recipe or config to an exported model, on a real pretrained family: a TIES merge and its
evaluation; a few-candidate search, its export, and the export reloaded by transformers alone and chatted with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomerge.cli import main
from evomerge.run.log import RunLog
from evomerge.zoo.smol import SKILLS, SmolFamily
from evomerge.zoo.smol.build import VARIANTS
from evomerge.zoo.smol.train import TRAINED

from .conftest import evaluate, greedy_accuracy

pytestmark = pytest.mark.slow  # its family build's hang guard: tests/conftest.py
CANDIDATES = 4
STATISTICS_TEXTS = 12  # of the reduced family's 48 calibration texts


@pytest.fixture(scope="module")
def run_dir(smol: SmolFamily, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The family's own search config, run for a few candidates on the local backend: its two Ray workers would log
    the same candidates (``in_flight`` fixes the order), and a Ray started by other tests of the session (a small
    object store) would be reused and refuse these sources. The one worker has two torch threads, so the run and
    its export use both cores of a CI machine. The export, the longest step of the suite, takes the reduced
    variant's small grid of fixed recipes (6 members, not 105: each is a merge) and a quarter of the calibration
    texts for RegMean's and Fisher's statistics (Fisher: a backward pass per text and expert) — every step of it
    still runs."""
    folder = tmp_path_factory.mktemp("smol-search")
    config = yaml.safe_load(smol.search_config.read_text())
    config["execution"]["threads"] = 2
    grid = VARIANTS["reduced"].check
    config["baselines"] = {"lambdas": list(grid.lambdas), "densities": list(grid.densities)}
    config["scoring"]["statistics_texts"] = STATISTICS_TEXTS
    (folder / "search.yaml").write_text(yaml.safe_dump(config))
    args = ["--run-dir", str(folder / "run"), "--max-evals", str(CANDIDATES), "--backend", "local", "--workers", "1",
            "--quiet"]
    assert main(["search", str(folder / "search.yaml"), *args]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def export_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smol-export") / "model"
    assert main(["export", str(run_dir), "--out", str(out), "--rescore-heldout", "2", "--quiet"]) == 0
    return out


def test_ties_merge_then_evaluate(smol: SmolFamily, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recipe = {"method": "ties", "base": str(smol.base), "parameters": {"lambda": 1.0},
              "sources": [{"model": str(smol.experts[s]), "parameters": {"weight": 1.0, "density": 0.5}}
                          for s in SKILLS]}
    (tmp_path / "ties.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "merged"
    assert main(["merge", str(tmp_path / "ties.yaml"), "--out", str(out)]) == 0

    base, merged = load_file(smol.base / "model.safetensors"), load_file(out / "model.safetensors")
    assert merged.keys() == base.keys()  # tied: no lm_head written, as in the sources
    assert all(merged[n].dtype == base[n].dtype for n in base)
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    assert changed == {n for n in base if n.endswith(TRAINED)}  # zero task vectors leave the base exactly
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (smol.base / name).read_bytes()
    config, base_config = (json.loads((folder / "config.json").read_text()) for folder in (out, smol.base))
    assert config["dtype"] == "float32"  # the merge's dtype, written out
    assert {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype")} == \
        {k: v for k, v in base_config.items() if k not in ("dtype", "torch_dtype")}

    heldout = {smol.skills[s].heldout_task: smol.skills[s].heldout for s in SKILLS}
    scores = evaluate(out, list(heldout), smol.task_dir, capsys)
    assert set(scores) == set(heldout)
    for task, data in heldout.items():  # one item may differ: a near tie can round apart batched and alone
        n = len(data.read_text().splitlines())
        assert scores[task] == pytest.approx(greedy_accuracy(out, data), abs=1.5 / n), task


def test_search_scores_every_candidate(run_dir: Path) -> None:
    candidates = RunLog.open(run_dir).candidates()
    assert len(candidates) == CANDIDATES and all(r.ok for r in candidates), [r.error for r in candidates]


def test_export_holds_the_candidate_the_run_scored(smol: SmolFamily, run_dir: Path, export_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = RunLog.open(run_dir)
    record = run.heldout()[run.exports()[-1].key]
    heldout = [smol.skills[s].heldout_task for s in SKILLS]
    direct = evaluate(export_dir, heldout, smol.task_dir, capsys)
    assert direct == pytest.approx({t: record.scores[t].metrics["acc,none"] for t in heldout}, abs=1e-9)


def test_export_reloads_with_transformers_and_chats(smol: SmolFamily, run_dir: Path, export_dir: Path) -> None:
    """A chat user's path — transformers alone, the exported tokenizer's chat template, greedy generation — says
    what lm-eval scored: on a held-out item the run counted as a greedy hit, generation is the answer, then stops."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunLog.open(run_dir)
    record = run.heldout()[run.exports()[-1].key]
    skill = smol.skills["rev"]
    items = [json.loads(line) for line in skill.heldout.read_text().splitlines()]
    hits = [it for it, acc in zip(items, record.scores[skill.heldout_task].per_item["acc,none"], strict=True)
            if acc == 1.0]
    assert hits, "the exported candidate lost the rev skill"

    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
    assert (model.config.tie_word_embeddings
            and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr())
    chat = tokenizer.apply_chat_template([{"role": "user", "content": hits[0]["question"]}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
    assert tokenizer.decode(chat["input_ids"][0]) == hits[0]["prompt"]
    with torch.no_grad():
        generated = model.generate(**chat, max_new_tokens=16, do_sample=False)
    # the words, then <|im_end|>
    assert tokenizer.decode(generated[0, chat["input_ids"].shape[1]:]) == hits[0]["answer"]
