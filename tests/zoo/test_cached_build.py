"""cached_build, the folder cache both families are built through, when two builders ask for one folder at once."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from evomerge.zoo.build import cached_build

KEY = {"builder_version": 1, "seed": 0}


class Builder:
    """A build that writes one file and then waits until the test lets it finish, counting how often it ran."""

    def __init__(self) -> None:
        self.runs = 0
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, tmp: Path, final: Path) -> dict[str, Any]:
        self.runs += 1
        (tmp / "model.txt").write_text(f"build {self.runs}")
        self.started.set()
        self.release.wait(timeout=60)
        return {"built_by": self.runs}


def build_in_thread(folder: Path, builder: Builder, results: list[str]) -> threading.Thread:
    def run() -> None:
        results.append(cached_build(folder, "family.json", KEY, "family", builder,
                                    lambda root: (root / "model.txt").read_text()))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_second_builder_waits_for_the_first_and_loads_what_it_built(tmp_path: Path) -> None:
    builder, results = Builder(), []
    first = build_in_thread(tmp_path / "family", builder, results)
    assert builder.started.wait(timeout=60)
    second = build_in_thread(tmp_path / "family", builder, results)
    second.join(timeout=1)
    assert second.is_alive() and builder.runs == 1, "the second builder did not wait for the first"
    builder.release.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert builder.runs == 1
    assert results == ["build 1", "build 1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["family"], "a lock or temporary folder was left behind"
