"""write_model_folder: HF layout, round trips, sharding, overwrite policy, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from evomerge.errors import EvomergeError
from evomerge.sources import writer
from evomerge.sources.pool import ModelSource, SourcePool
from evomerge.sources.writer import parse_size, write_model_folder


@pytest.fixture(scope="module")
def base(tiny_family: dict[str, Path]) -> ModelSource:
    return ModelSource.load(tiny_family["base"])


def test_written_folder_loads_back_into_a_pool(tiny_family: dict[str, Path], base: ModelSource, tmp_path: Path) -> None:
    out = write_model_folder(base.tensors, tmp_path / "out", template=base.path)
    pool = SourcePool.load(tiny_family["base"], [out])
    for name in pool.tensor_names:
        assert torch.equal(pool.sources[0].tensors[name], base.tensors[name]), name


def test_written_folder_loads_with_transformers_offline(base: ModelSource, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    out = write_model_folder(base.tensors, tmp_path / "out", template=base.path, shard_size=4096)
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    state = model.state_dict()
    for name, tensor in base.tensors.items():
        assert torch.equal(state[name], tensor), name


def test_small_shard_size_writes_shards_and_an_hf_index(base: ModelSource, tmp_path: Path) -> None:
    out = write_model_folder(base.tensors, tmp_path / "out", template=base.path, shard_size=4096)
    sizes = {n: t.numel() * t.element_size() for n, t in base.tensors.items()}
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (out / "model.safetensors").exists()
    assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == sum(sizes.values())
    assert set(index["weight_map"]) == set(base.tensors) and set(index["weight_map"].values()) == set(shards)
    for shard in shards:  # no shard over the limit unless it holds one tensor bigger than the limit
        held = [n for n, f in index["weight_map"].items() if f == shard]
        assert len(held) == 1 or sum(sizes[n] for n in held) <= 4096


def test_everything_fits_one_shard_gives_a_single_file(base: ModelSource, tmp_path: Path) -> None:
    out = write_model_folder(base.tensors, tmp_path / "out", template=base.path, shard_size="1MB")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]


def test_template_tokenizer_files_and_extra_files_are_copied(base: ModelSource, tmp_path: Path, copy_model) -> None:
    template = copy_model(base.path, tmp_path / "template")
    (template / "tokenizer.json").write_text("{}")
    (template / "tokenizer_config.json").write_text('{"chat_template": "x"}')
    out = write_model_folder(base.tensors, tmp_path / "out", template=template,
                             extra_files={"README.md": "# card", "r.bin": b"\0"})
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (template / name).read_bytes(), name
    assert (out / "README.md").read_text() == "# card" and (out / "r.bin").read_bytes() == b"\0"


def test_existing_folder_is_refused_without_force(base: ModelSource, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EvomergeError, match="--force"):
        write_model_folder(base.tensors, out, template=base.path)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_force_replaces_the_existing_folder(base: ModelSource, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    write_model_folder(base.tensors, out, template=base.path, force=True)
    assert (out / "model.safetensors").is_file() and not (out / "old.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_midway_leaves_nothing_behind(base: ModelSource, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = writer.save_file, []

    def fail_on_second_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real(*args, **kwargs)

    monkeypatch.setattr(writer, "save_file", fail_on_second_shard)
    with pytest.raises(OSError, match="disk full"):
        write_model_folder(base.tensors, tmp_path / "out", template=base.path, shard_size=4096)
    assert list(tmp_path.iterdir()) == []


def test_failure_with_force_keeps_the_old_folder(base: ModelSource, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    monkeypatch.setattr(writer, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        write_model_folder(base.tensors, out, template=base.path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (out / "old.txt").read_text() == "old"


def test_non_contiguous_tensors_are_written(base: ModelSource, tmp_path: Path) -> None:
    tensors = {**base.tensors, "lm_head.weight": base.tensors["lm_head.weight"].t().contiguous().t()}
    assert not tensors["lm_head.weight"].is_contiguous()
    out = write_model_folder(tensors, tmp_path / "out", template=base.path)
    assert torch.equal(ModelSource.load(out).tensors["lm_head.weight"], base.tensors["lm_head.weight"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [("500MB", 500 * 10**6), ("2GB", 2 * 10**9), ("1GiB", 2**30), ("1.5 kb", 1500), (4096, 4096), ("123", 123)],
)
def test_parse_size_reads_human_sizes(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "5XB", "-1GB", 0])
def test_parse_size_refuses_nonsense(text: str | int) -> None:
    with pytest.raises(EvomergeError, match="size"):
        parse_size(text)
