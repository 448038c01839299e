"""Imports go one way: every import between evomerge's packages follows the layers docs/ARCHITECTURE.md draws."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "evomerge"


def layers() -> dict[str, int]:
    """Package -> layer, read from the ```layers block of docs/ARCHITECTURE.md."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"```layers\n(.*?)```", text, re.S)
    assert block, "docs/ARCHITECTURE.md has no ```layers block"
    out = {}
    for line in block.group(1).splitlines():
        level, _, names = line.partition(":")
        out.update({name: int(level) for name in names.split()})
    return out


def package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_packages(path: Path) -> set[str]:
    """The evomerge packages a module imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] if node.module != "evomerge" else [f"evomerge.{a.name}" for a in node.names]
        else:
            continue
        found.update(m.split(".")[1] for m in modules if m.startswith("evomerge."))
    return found


def arrows() -> list[tuple[str, str, Path]]:
    return [(package_of(f), target, f) for f in sorted(PACKAGE.rglob("*.py"))
            for target in imported_packages(f) if target != package_of(f)]


def test_every_package_has_a_layer() -> None:
    level = layers()
    packages = {package_of(f) for f in PACKAGE.rglob("*.py")} - {"__init__"}
    assert packages - set(level) == set(), "add these packages to the layers in docs/ARCHITECTURE.md"


def test_imports_only_point_to_lower_layers() -> None:
    level = layers()
    wrong = [f"{path.relative_to(REPO)}: {src} (layer {level[src]}) imports {dst} (layer {level[dst]})"
             for src, dst, path in arrows() if level[dst] >= level[src]]
    assert wrong == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from evomerge.run.log import RunLog\n    import evomerge.export.card\n"
                      "from evomerge import pareto\n")
    assert imported_packages(module) == {"run", "export", "pareto"}
