"""SourcePool loading: file layouts, pickle policy, fingerprints, mergeable tensors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from evomerge.errors import EvomergeError
from evomerge.sources.pool import ModelSource, SourcePool


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_sharded_and_single_file_give_the_same_tensors(tiny_family: dict[str, Path], sharded_base: Path) -> None:
    assert len(list(sharded_base.glob("model-*.safetensors"))) > 1
    single = ModelSource.load(tiny_family["base"])
    sharded = ModelSource.load(sharded_base)
    assert_same_tensors(single.tensors, sharded.tensors)


def test_pool_exposes_base_sources_config_and_layer_ordered_names(tiny_family: dict[str, Path]) -> None:
    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    assert [s.path for s in pool.sources] == [tiny_family["a"].resolve(), tiny_family["b"].resolve()]
    assert pool.config["model_type"] == "llama" and pool.n_layers == 2
    assert set(pool.tensor_names) == set(load_file(tiny_family["base"] / "model.safetensors"))
    layers = [n for n in pool.tensor_names if ".layers." in n]
    assert layers == sorted(layers, key=lambda n: int(n.split(".")[2]))


def test_pool_needs_at_least_one_source(tiny_family: dict[str, Path]) -> None:
    with pytest.raises(EvomergeError, match="at least one"):
        SourcePool.load(tiny_family["base"], [])


def test_pickle_only_folder_is_refused_by_default(tiny_family: dict[str, Path], tmp_path: Path, save_pickles) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_family["a"] / "config.json", folder)
    save_pickles(load_file(tiny_family["a"] / "model.safetensors"), folder)
    with pytest.raises(EvomergeError, match="pytorch_model.bin.*convert them to safetensors.*allow_pickle"):
        SourcePool.load(tiny_family["base"], [folder])


@pytest.mark.parametrize("shards", [1, 2])
def test_pickle_folder_loads_with_allow_pickle(tiny_family: dict[str, Path], tmp_path: Path, save_pickles,
                                               shards: int) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(tiny_family["a"] / "config.json", folder)
    tensors = load_file(tiny_family["a"] / "model.safetensors")
    save_pickles(tensors, folder, shards=shards)
    pool = SourcePool.load(tiny_family["base"], [folder], allow_pickle=True)
    assert_same_tensors(pool.sources[0].tensors, tensors)


def test_fingerprints_are_stable_and_change_with_one_byte(tiny_family: dict[str, Path], tmp_path: Path,
                                                          copy_model) -> None:
    copy = copy_model(tiny_family["a"], tmp_path / "a")
    first = SourcePool.load(tiny_family["base"], [copy]).fingerprints()
    again = SourcePool.load(tiny_family["base"], [copy]).fingerprints()
    assert first == again
    assert set(first) == {f"base:{tiny_family['base'].resolve()}", f"source0:{copy.resolve()}"}
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-1] ^= 1  # last byte of the last tensor's data: still a valid file
    (copy / "model.safetensors").write_bytes(bytes(data))
    changed = SourcePool.load(tiny_family["base"], [copy]).fingerprints()
    assert changed[f"source0:{copy.resolve()}"] != first[f"source0:{copy.resolve()}"]
    assert changed[f"base:{tiny_family['base'].resolve()}"] == first[f"base:{tiny_family['base'].resolve()}"]


def test_fingerprint_is_sha256_of_the_weight_file(tiny_family: dict[str, Path]) -> None:
    import hashlib

    want = hashlib.sha256((tiny_family["a"] / "model.safetensors").read_bytes()).hexdigest()
    assert ModelSource.load(tiny_family["a"]).fingerprint == want


def test_other_dtype_is_accepted(variant, tiny_family: dict[str, Path]) -> None:
    half = variant(edit=lambda t: {k: v.to(torch.bfloat16) for k, v in t.items()})
    pool = SourcePool.load(tiny_family["base"], [half])
    assert pool.sources[0].tensors[pool.tensor_names[0]].dtype == torch.bfloat16


def test_integer_buffers_are_not_mergeable(tiny_family: dict[str, Path], tmp_path: Path, copy_model) -> None:
    def add_buffer(t: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**t, "model.position_ids": torch.arange(8)}

    # an architecture transformers does not know: every checkpoint key is kept, integer buffers too
    unknown = {"model_type": "evomerge-toy", "architectures": ["ToyForCausalLM"]}
    base = copy_model(tiny_family["base"], tmp_path / "base", config=unknown, edit=add_buffer)
    source = copy_model(tiny_family["a"], tmp_path / "a", config=unknown, edit=add_buffer)
    pool = SourcePool.load(base, [source])
    assert not pool.is_mergeable("model.position_ids")
    assert pool.is_mergeable("model.embed_tokens.weight")
