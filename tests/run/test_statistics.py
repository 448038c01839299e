"""Statistics in the run folder: computed once per source, reused while their fingerprint holds, else recomputed."""

from __future__ import annotations

from pathlib import Path

import torch

from evomerge.run.statistics import fingerprint, gram_path, source_grams

DATA, MODEL = "data-sha", "model-sha"


class Compute:
    """A stand-in for the worker's computation that counts its calls."""

    def __init__(self, value: float = 1.0) -> None:
        self.calls, self.value = 0, value

    def __call__(self) -> dict[str, torch.Tensor]:
        self.calls += 1
        return {"layers.0.mlp.up_proj.weight": torch.full((3, 3), self.value)}


def test_statistics_are_computed_once_then_read_back_without_rewriting_the_file(tmp_path: Path) -> None:
    compute = Compute()
    first = source_grams(tmp_path, 0, fingerprint(MODEL, DATA), compute)
    stat = gram_path(tmp_path, 0).stat()
    again = source_grams(tmp_path, 0, fingerprint(MODEL, DATA), compute)
    assert compute.calls == 1 and torch.equal(again["layers.0.mlp.up_proj.weight"], first["layers.0.mlp.up_proj.weight"])
    assert (gram_path(tmp_path, 0).stat().st_mtime_ns, gram_path(tmp_path, 0).stat().st_ino) == (stat.st_mtime_ns,
                                                                                                 stat.st_ino)


def test_changed_calibration_data_recomputes_and_replaces_them(tmp_path: Path) -> None:
    source_grams(tmp_path, 0, fingerprint(MODEL, DATA), Compute(1.0))
    changed = Compute(2.0)
    grams = source_grams(tmp_path, 0, fingerprint(MODEL, "other-data"), changed)
    assert changed.calls == 1 and float(grams["layers.0.mlp.up_proj.weight"][0, 0]) == 2.0
    reread = source_grams(tmp_path, 0, fingerprint(MODEL, "other-data"), changed)
    assert changed.calls == 1 and float(reread["layers.0.mlp.up_proj.weight"][0, 0]) == 2.0


def test_a_changed_source_model_recomputes_them(tmp_path: Path) -> None:
    source_grams(tmp_path, 0, fingerprint(MODEL, DATA), Compute())
    changed = Compute()
    source_grams(tmp_path, 0, fingerprint("retrained-model-sha", DATA), changed)
    assert changed.calls == 1


def test_each_source_has_a_file_of_its_own(tmp_path: Path) -> None:
    compute = Compute()
    source_grams(tmp_path, 0, fingerprint(MODEL, DATA), compute)
    source_grams(tmp_path, 1, fingerprint("source-1-sha", DATA), compute)
    assert compute.calls == 2 and gram_path(tmp_path, 0) != gram_path(tmp_path, 1)
    assert gram_path(tmp_path, 1).is_file()


def test_a_damaged_file_is_recomputed(tmp_path: Path) -> None:
    source_grams(tmp_path, 0, fingerprint(MODEL, DATA), Compute())
    gram_path(tmp_path, 0).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    again = Compute()
    source_grams(tmp_path, 0, fingerprint(MODEL, DATA), again)
    assert again.calls == 1 and not list(gram_path(tmp_path, 0).parent.glob(".*partial"))
