"""docs/MIGRATING.md maps every field and command-line option of the installed mergekit-evolve (dev-only)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "MIGRATING.md"


def first_column(heading: str) -> set[str]:
    """The backticked names in the first column of the table under ``## heading``."""
    section = DOC.read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in rows for name in re.findall(r"`([^`]+)`", cell)}


def evolve_options() -> set[str]:
    """mergekit-evolve's click options and argument, read from its source (importing it needs vLLM)."""
    spec = importlib.util.find_spec("mergekit")
    if spec is None or spec.origin is None:
        pytest.skip("mergekit (a dev-only dependency) is not installed")
    source = Path(spec.origin).parent / "scripts" / "evolve.py"
    names = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr in ("option", "argument"):
            texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if node.func.attr == "argument":
                names.add(texts[0].upper().replace("-", "_"))
            names.update(o for t in texts if t.startswith("-") for o in t.split("/"))
    return names


def test_every_mergekit_evolve_option_is_in_the_table() -> None:
    options = evolve_options()
    assert "--max-fevals" in options and "GENOME_CONFIG_PATH" in options  # the reading of the source works
    assert sorted(options - first_column("Command-line options")) == []


def test_every_mergekit_evolve_config_field_is_in_the_table() -> None:
    evo = pytest.importorskip("mergekit.evo.config", reason="mergekit (a dev-only dependency) is not installed")
    fields = {*evo.EvolMergeConfiguration.model_fields,
              *(f"genome.{f}" for f in evo.ModelGenomeDefinition.model_fields),
              *(f"tasks[].{f}" for f in evo.TaskConfiguration.model_fields)}
    assert sorted(fields - first_column("Config fields")) == []
