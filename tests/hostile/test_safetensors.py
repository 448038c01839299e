"""Damaged or hostile weight files: every safetensors header and shard index is checked before anything is allocated
or followed, wherever evomerge reads them (merge, search --check, search, evaluate); each is one line, exit 2."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from evomerge.sources.folder import read_tensor_names

from .hostile_files import assert_refused, copy_family, recipe_yaml, search_yaml

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def split(file: Path) -> tuple[dict[str, Any], bytes]:
    """A safetensors file's header (parsed) and its data bytes."""
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def with_header(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Path], bytes]:
    """A forger: the file's data under the header ``edit`` makes of its own (any JSON value)."""

    def forge(file: Path) -> bytes:
        header, data = split(file)
        text = json.dumps(edit(header)).encode()
        return struct.pack("<Q", len(text)) + text + data

    return forge


def first_tensor(header: dict[str, Any]) -> str:
    return min((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"][0])


def edit_first(**fields: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def edit(header: dict[str, Any]) -> dict[str, Any]:
        name = first_tensor(header)
        header[name] = {k: v for k, v in {**header[name], **fields}.items() if v is not None}
        return header

    return edit


def shifted(header: dict[str, Any]) -> dict[str, Any]:
    """The first tensor's bytes moved past the end of the file (size kept, so only the place is wrong)."""
    meta = header[first_tensor(header)]
    begin, end = meta["data_offsets"]
    meta["data_offsets"] = [begin + 10**9, end + 10**9]
    return header


FORGED: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "header length 2^62": (lambda f: struct.pack("<Q", 2**62) + f.read_bytes()[8:],
                           "its header length 4611686018427387904 exceeds the 100000000-byte bound"),
    "header length past the end": (lambda f: struct.pack("<Q", f.stat().st_size) + f.read_bytes()[8:],
                                   "runs past the end of the"),
    "shorter than a header length": (lambda f: b"\x10\x00", "fewer than the 8 of a header length"),
    "header a JSON list": (with_header(lambda h: list(h)), "its header is a JSON list, not an object"),
    "header not JSON": (lambda f: struct.pack("<Q", 4) + b"{\xff\xfe}" + split(f)[1], "its header is not UTF-8 JSON"),
    "header nesting 100000 deep": (lambda f: struct.pack("<Q", 200_000) + b"[" * 100_000 + b"]" * 100_000,
                                   "its header nests too deeply"),
    "unknown dtype": (with_header(edit_first(dtype="Q7")), "has dtype 'Q7', not one of F64"),
    "shape not a list of sizes": (with_header(edit_first(shape=[-1, 16])), "has shape [-1, 16], not a list of sizes"),
    "no data_offsets": (with_header(edit_first(data_offsets=None)), "lacks its dtype, shape or data_offsets"),
    "offsets that disagree with dtype and shape": (with_header(edit_first(shape=[3])), "needs 12"),
    "offsets outside the file": (with_header(shifted), "of the data, not at 0 where the previous tensor ends"),
    "bytes no tensor owns": (lambda f: f.read_bytes() + b"\0" * 64, "after the header"),
}


def forge_model(folder: Path, forge: Callable[[Path], bytes]) -> Path:
    file = folder / WEIGHTS
    file.write_bytes(forge(file))
    return folder


@pytest.fixture
def fam(tmp_path: Path, scored_family: dict[str, Path]) -> dict[str, Path]:
    return copy_family(tmp_path / "models", scored_family)


@pytest.mark.parametrize("case", sorted(FORGED))
def test_a_forged_header_in_a_source_is_refused_by_merge(case: str, fam, tmp_path: Path, capsys) -> None:
    forge, fragment = FORGED[case]
    forge_model(fam["a"], forge)
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    line = assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys, fragment,
                          *fam.values(), recipe)
    assert f"{fam['a'] / WEIGHTS} is not a valid safetensors file" in line or "cannot read" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["header length 2^62", "header a JSON list", "unknown dtype"])
@pytest.mark.parametrize("check", [True, False], ids=["search --check", "search"])
def test_a_forged_header_in_the_base_is_refused_before_a_run_folder_exists(case: str, check: bool, fam, tmp_path: Path,
                                                                           capsys) -> None:
    forge, fragment = FORGED[case]
    forge_model(fam["base"], forge)
    config = search_yaml(tmp_path / "cfg", fam)
    argv = ["search", str(config), "--run-dir", str(tmp_path / "run"), *(["--check"] if check else [])]
    assert_refused(argv, capsys, fragment, *fam.values(), config)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["header length 2^62", "header a JSON list", "offsets outside the file"])
def test_evaluate_refuses_a_forged_header_with_one_line(case: str, fam, capsys) -> None:
    forge, fragment = FORGED[case]
    forge_model(fam["a"], forge)
    argv = ["evaluate", str(fam["a"]), "--tasks", "tiny_rev", "--task-path", str(fam["tasks"])]
    assert_refused(argv, capsys, fragment, *fam.values())


# --- model.safetensors.index.json ------------------------------------------------------------------------------------


def shard(folder: Path, name: str, *, move_to: Path | None = None, link: bool = False) -> Path:
    """The folder's weights listed in an index under ``name``; the file itself at ``move_to`` (default: the name in
    the folder), or a symlink there when ``link``."""
    weights = folder / WEIGHTS
    header, _ = split(weights)
    index = {"metadata": {}, "weight_map": {n: name for n in header if n != "__metadata__"}}
    (folder / INDEX).write_text(json.dumps(index))
    target = move_to or folder / name
    target.parent.mkdir(parents=True, exist_ok=True)
    weights.rename(target)
    if link:
        (folder / name).symlink_to(target)
    return folder


def test_a_shard_path_climbing_out_of_the_folder_is_refused(fam, tmp_path: Path, capsys) -> None:
    shard(fam["a"], "../elsewhere/model-00001-of-00001.safetensors")
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys,
                   "lists shard '../elsewhere/model-00001-of-00001.safetensors', which is not a file name inside",
                   *fam.values(), recipe)


def test_an_absolute_shard_path_is_refused(fam, tmp_path: Path, capsys) -> None:
    outside = tmp_path / "outside" / "weights.safetensors"
    shard(fam["a"], str(outside), move_to=outside)
    config = search_yaml(tmp_path / "cfg", fam)
    assert_refused(["search", str(config), "--check"], capsys, "which is not a file name inside",
                   *fam.values(), config, outside)


def test_a_shard_symlinked_out_of_the_folder_is_refused(fam, tmp_path: Path, capsys) -> None:
    outside = tmp_path / "outside" / "weights.safetensors"
    shard(fam["a"], "model-00001-of-00001.safetensors", move_to=outside, link=True)
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys,
                   f"a symlink to {outside} outside", *fam.values(), recipe, outside)


def test_a_shard_in_a_hugging_face_cache_blob_is_read(tiny_family: dict[str, Path], tmp_path: Path) -> None:
    """A hub cache snapshot links each file to ../../blobs/<sha>: that is inside the cached repository."""
    snapshot = shutil.copytree(tiny_family["a"], tmp_path / "models--org--a" / "snapshots" / "0123abc")
    blob = tmp_path / "models--org--a" / "blobs" / "f00d"
    shard(snapshot, "model-00001-of-00001.safetensors", move_to=blob, link=True)
    assert read_tensor_names(snapshot) == read_tensor_names(tiny_family["a"])


@pytest.mark.parametrize("index,fragment", [
    ("[]", "must hold a JSON object"),
    ('{"weight_map": {"model.norm.weight": 7}}', "maps a tensor to 7, not a shard file name"),
    ('{"weight_map": []}', "has no weight_map"),
], ids=["a list", "a number for a file", "a list for the map"])
def test_an_index_of_the_wrong_shape_is_refused(index: str, fragment: str, fam, tmp_path: Path, capsys) -> None:
    (fam["a"] / INDEX).write_text(index)
    recipe = recipe_yaml(tmp_path / "cfg", fam["base"], [fam["a"], fam["b"]])
    assert_refused(["merge", str(recipe), "--out", str(tmp_path / "out")], capsys, fragment, *fam.values(), recipe)

