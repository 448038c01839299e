"""Real-model details of a worker: an explicit dtype, the tokenizer source, extra checkpoint keys."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from evomerge.execution.worker import Worker, WorkerSpec

WEIGHTS = (0.5, 0.3, 0.2)


def copy_family(family: dict[str, Path], root: Path, edit) -> dict[str, Path]:
    """The scoreable family's model folders, each checkpoint edited by ``edit``."""
    out = {}
    for name in ("base", "a", "b", "c"):
        out[name] = root / name
        shutil.copytree(family[name], out[name])
        save_file(edit(load_file(out[name] / "model.safetensors")), out[name] / "model.safetensors",
                  metadata={"format": "pt"})
    return out


def spec_for(spec: WorkerSpec, family: dict[str, Path]) -> WorkerSpec:
    return replace(spec, base=family["base"], sources=(family["a"], family["b"], family["c"]))


def test_the_live_model_takes_the_sources_dtype_unless_the_config_sets_one(spec, scoreable_family, make_recipe,
                                                                           tmp_path: Path) -> None:
    bf16 = copy_family(scoreable_family, tmp_path, lambda t: {n: v.to(torch.bfloat16) for n, v in t.items()})
    worker = Worker(spec_for(spec, bf16))
    assert {p.dtype for p in worker.model.parameters()} == {torch.bfloat16}
    assert worker.evaluate(make_recipe(WEIGHTS)).error is None
    wide = Worker(replace(spec_for(spec, bf16), dtype="float32"))
    assert {p.dtype for p in wide.model.parameters()} == {torch.float32}


def test_extra_checkpoint_keys_are_ignored_as_transformers_does(spec, scoreable_family, make_recipe, local_scores,
                                                                 tmp_path: Path) -> None:
    extra = "model.layers.0.self_attn.rotary_emb.inv_freq"  # what older Llama checkpoints carry
    family = copy_family(scoreable_family, tmp_path, lambda t: {**t, extra: torch.arange(4, dtype=torch.float32)})
    outcome = Worker(spec_for(spec, family)).evaluate(make_recipe((1.0, 0.0, 0.0)))
    assert outcome.error is None and outcome.scores == local_scores[0]  # WEIGHTS[0] of the conftest: the same model


def test_the_tokenizer_comes_from_the_tokenizer_source(spec, scoreable_family, tmp_path: Path) -> None:
    chat = tmp_path / "chat"
    shutil.copytree(scoreable_family["c"], chat)
    config = json.loads((chat / "tokenizer_config.json").read_text())
    (chat / "tokenizer_config.json").write_text(json.dumps({**config, "eos_token": ".",
                                                            "chat_template": "{{ messages }}"}))
    worker = Worker(replace(spec, tokenizer=chat))
    assert worker.tokenizer.eos_token == "." and worker.tokenizer.chat_template == "{{ messages }}"
    assert Worker(spec).tokenizer.eos_token == "<eos>"
