"""Model folders for the sources tests: the shared tiny Llama family plus edited copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

Edit = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def _copy_model(src: Path, dst: Path, *, config: dict[str, Any] | None = None, edit: Edit | None = None) -> Path:
    """A copy of the single-file folder ``src``, with config keys replaced and tensors edited."""
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        (dst / "config.json").write_text(json.dumps({**cfg, **config}))
    if edit:
        save_file(edit(load_file(dst / "model.safetensors")), dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.fixture
def variant(tiny_family: dict[str, Path], tmp_path: Path) -> Callable[..., Path]:
    """``variant(config=..., edit=...)``: a copy of source 'a' with one thing changed."""

    def make(*, config: dict[str, Any] | None = None, edit: Edit | None = None) -> Path:
        return _copy_model(tiny_family["a"], tmp_path / f"variant{len(list(tmp_path.iterdir()))}", config=config,
                           edit=edit)

    return make


@pytest.fixture(scope="session")
def sharded_base(tiny_family: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base saved by transformers itself in shards of at most 4 kB."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded") / "base"
    AutoModelForCausalLM.from_pretrained(tiny_family["base"]).save_pretrained(out, max_shard_size="4KB")
    return out


def _save_pickles(tensors: dict[str, Tensor], folder: Path, *, shards: int = 1) -> Path:
    names = list(tensors)
    if shards == 1:
        torch.save(tensors, folder / "pytorch_model.bin")
        return folder
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: tensors[n] for n in names[i::shards]}
        torch.save(part, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


@pytest.fixture
def copy_model() -> Callable[..., Path]:
    """``copy_model(src, dst, config=..., edit=...)``."""
    return _copy_model


@pytest.fixture
def save_pickles() -> Callable[..., Path]:
    """``save_pickles(tensors, folder, shards=1)``: a pickle-only folder,
    ``pytorch_model.bin`` or shards with an index."""
    return _save_pickles
