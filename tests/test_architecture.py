"""docs/ARCHITECTURE.md holds: every import between evomerge's packages follows the layers it draws, and its
package table names modules and symbols that exist."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from pathlib import Path
from types import ModuleType

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


def table_names() -> dict[str, list[str]]:
    """Package or module (``config``, ``errors``) -> the main names its row of the package table gives."""
    rows = {}
    for line in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        row = re.fullmatch(r"\| `(\w+)(?:\.py|/)` \|.*\| (.*) \|", line)
        if row:
            rows[row.group(1)] = re.findall(r"`([^`]+)`", row.group(2))
    assert rows, "docs/ARCHITECTURE.md has no package table"
    return rows


def modules_of(package: str) -> list[ModuleType]:
    """``evomerge.<package>`` and, for a package, every module under it."""
    top = importlib.import_module(f"evomerge.{package}")
    found = pkgutil.walk_packages(getattr(top, "__path__", []), f"{top.__name__}.")
    return [top, *(importlib.import_module(m.name) for m in found)]


def exists(package: str, name: str) -> bool:
    """Whether ``name`` (``RunLog``, or ``schema.load``: module then attribute) is an attribute of the package or
    of one of its modules."""
    module, _, attr = name.rpartition(".")
    return any(hasattr(m, attr) for m in modules_of(package) if not module or m.__name__.endswith(f".{module}"))


def test_the_package_table_has_a_row_per_layered_package() -> None:
    assert set(table_names()) == set(layers())


def test_every_main_name_in_the_package_table_exists() -> None:
    missing = [f"{package}: {name}" for package, names in table_names().items() for name in names
               if not exists(package, name)]
    assert missing == [], "docs/ARCHITECTURE.md's package table names what the package does not have"


def test_the_name_check_refuses_what_is_not_there() -> None:
    assert exists("sources", "write_model_folder") and exists("config", "schema.load")
    assert not exists("sources", "write_model_files") and not exists("config", "schema.load_config")
