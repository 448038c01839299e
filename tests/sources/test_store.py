"""Sources in aligned blocks: read once into a store, mapped by workers without copies, in their own dtype."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from evomerge.sources.pool import SourcePool, share
from evomerge.sources.store import ALIGN, safetensors_index


def test_every_tensor_starts_on_an_aligned_address_in_its_layer_groups_block(tiny_family: dict[str, Path]) -> None:
    pool = SourcePool.load(tiny_family["base"], [tiny_family["a"]])
    for model in pool.models:
        assert [b.group for b in model.blocks] == ["lm_head", "embed", "layers.0", "layers.1", "final_norm"]
        for block, buffer in zip(model.blocks, model.buffers, strict=True):
            for entry in block.entries:
                view = model.tensors[entry.name]
                assert view.data_ptr() % ALIGN == 0
                assert view.untyped_storage().data_ptr() == buffer.untyped_storage().data_ptr()  # a view, not a copy


def test_loaded_tensors_equal_the_file_and_keep_its_dtype(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "bf16"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_family["a"] / "config.json").read_text())
    tensors = {n: t.to(torch.bfloat16) for n, t in load_file(tiny_family["a"] / "model.safetensors").items()}
    save_file(tensors, folder / "model.safetensors")
    pool = SourcePool.load(tiny_family["base"], [folder])
    for name, want in tensors.items():
        got = pool.sources[0].tensors[name]
        assert got.dtype == torch.bfloat16 and torch.equal(got, want), name
    assert pool.base.tensors[name].dtype == torch.float32  # each model in its own dtype


def test_a_store_gets_one_block_at_a_time_and_attach_maps_them(tiny_family: dict[str, Path]) -> None:
    stored: dict[int, torch.Tensor] = {}

    def put(buffer: torch.Tensor) -> int:  # a store that keeps each block under a handle
        stored[len(stored)] = buffer
        return len(stored) - 1

    shared = share(tiny_family["base"], [tiny_family["a"], tiny_family["b"]], put)
    assert shared.nbytes == sum(b.numel() for b in stored.values())
    pool = SourcePool.attach(shared, lambda handles: [stored[h] for h in handles])
    direct = SourcePool.load(tiny_family["base"], [tiny_family["a"], tiny_family["b"]])
    assert pool.tensor_names == direct.tensor_names
    for mine, theirs in zip(pool.models, direct.models, strict=True):
        assert all(torch.equal(mine.tensors[n], theirs.tensors[n]) for n in pool.tensor_names)
    first = shared.handles[0][0]
    assert pool.base.buffers[0].data_ptr() == stored[first].data_ptr()  # the store's memory itself


def test_header_index_gives_dtype_shape_and_offset(tiny_family: dict[str, Path]) -> None:
    file = tiny_family["a"] / "model.safetensors"
    index = safetensors_index(file)
    tensors = load_file(file)
    assert index.keys() == tensors.keys()
    raw = file.read_bytes()
    for name, info in index.items():
        assert info.dtype == tensors[name].dtype and info.shape == tuple(tensors[name].shape)
        data = bytearray(raw[info.start : info.start + info.nbytes])
        assert torch.equal(torch.frombuffer(data, dtype=info.dtype).view(info.shape), tensors[name])
