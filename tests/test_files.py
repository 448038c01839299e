"""Replacing what evomerge writes: whole or not at all, nothing left beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from evomerge.files import replace_folder, write_text_atomic


def folder(path: Path, text: str) -> Path:
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def test_a_replaced_folder_holds_the_new_files_and_nothing_is_left_beside_it(tmp_path: Path) -> None:
    out = folder(tmp_path / "out", "old")
    replace_folder(folder(tmp_path / "new", "new"), out)
    assert (out / "f.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_old_folder_comes_back_when_the_new_one_cannot_be_moved_in(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out, new = folder(tmp_path / "out", "old"), folder(tmp_path / "new", "new")
    rename = Path.rename

    def failing(self: Path, target: Path) -> Path:
        if self == new:
            raise OSError("disk full")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="disk full"):
        replace_folder(new, out)
    assert (out / "f.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]


def test_an_atomic_write_leaves_only_the_file(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "a.json", "{}\n")
    write_text_atomic(tmp_path / "a.json", "[]\n")
    assert (tmp_path / "a.json").read_text() == "[]\n" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
