"""Names on the model card render as themselves: table pipes, HTML and Markdown markup in model or run names are
escaped, a name with a line break is refused when the config is checked, and the front matter gives every name back
exactly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from evomerge.config.search import SourcesConfig
from evomerge.export.card import code, md
from evomerge.export.export import export_candidate

from ..export.conftest import FakeExecutor, export_config, synthetic_run
from .hostile_files import assert_refused, copy_family, search_yaml

HOSTILE = ("org/a | b", "<script>alert(1)</script>", "**bold** [link](http://x) `tick` _u_ ~s~ #h")
CELL_SPLIT = re.compile(r"(?<!\\)\|")


@pytest.fixture
def card(scored_family: dict[str, Path], tmp_path: Path) -> str:
    """The card of a run whose base and two sources carry hostile names, and whose run name is markup too."""
    f = scored_family
    sources = SourcesConfig(f["base"], (f["a"], f["b"]), base_name=HOSTILE[0], names=HOSTILE[1:])
    cfg = export_config(f, name="<h1>run<h1> | x", sources=sources)
    FakeExecutor.jobs = []
    run = synthetic_run(tmp_path / "run", cfg, n=6)
    export_candidate(run.root, tmp_path / "model", executor_factory=FakeExecutor, quiet=True)
    return (tmp_path / "model" / "README.md").read_text()


def body(card: str) -> list[str]:
    return card.split("---\n", 2)[2].splitlines()


def test_the_front_matter_gives_every_name_back_exactly(card: str) -> None:
    assert yaml.safe_load(card.split("---\n")[1])["base_model"] == list(HOSTILE)


def test_every_table_row_has_as_many_cells_as_its_header(card: str) -> None:
    tables: list[list[str]] = [[]]
    for line in body(card):
        if line.startswith("|"):
            tables[-1].append(line)
        elif tables[-1]:
            tables.append([])
    tables = [t for t in tables if t]
    assert len(tables) >= 4  # sources, genome, scores, baselines
    for table in tables:
        widths = {len(CELL_SPLIT.split(row)) for row in table}
        assert len(widths) == 1, table


def test_no_name_becomes_html_or_a_heading(card: str) -> None:
    """Outside code spans (whose text is shown verbatim, HTML included) a name's tags are entities."""
    prose = re.sub(r"(`+).*?\1", "", "\n".join(body(card)))
    assert "<" not in prose and "&lt;script&gt;alert(1)&lt;/script&gt;" in prose
    headings = [line for line in body(card) if line.startswith("#")]
    assert headings[0].startswith("# &lt;h1&gt;run&lt;h1&gt; \\| x — candidate ")
    assert headings[1:] == ["## Source models", "## Genome", "## Scores", "## Baselines", "## Rebuild"]


def test_markdown_markup_in_a_name_is_shown_not_applied(card: str) -> None:
    assert "weight · \\*\\*bold\\*\\* \\[link\\](http://x) \\`tick\\` \\_u\\_ \\~s\\~ #h" in card
    assert "| t0_heldout |" in card  # an underscore inside a word starts no emphasis
    assert "| base | `org/a \\| b` |" in card  # a code span: only the pipe needs its escape inside a table


@pytest.mark.parametrize("field,value,where", [
    ("names", ["a\n## injected", "b"], "sources.names[0]"),
    ("base_name", "base\r\nlicense: mit", "sources.base_name"),
    ("names", ["a", "tab\there"], "sources.names[1]"),
], ids=["line break in a name", "line break in the base's name", "tab in a name"])
def test_a_name_that_is_not_one_line_is_refused_when_the_config_is_checked(field, value, where, tmp_path: Path,
                                                                           scored_family, capsys) -> None:
    fam = copy_family(tmp_path / "models", scored_family)
    config = search_yaml(tmp_path / "cfg", fam, **{field: value})
    assert_refused(["search", str(config), "--check"], capsys,
                   f"config field '{where}' must be one line of printable text", *fam.values(), config)


def test_a_code_span_fence_outgrows_the_backticks_inside() -> None:
    assert code("a`b") == "``a`b``" and code("`x`") == "`` `x` ``" and code("p|q") == "`p\\|q`"
    assert md("a\nb <i>") == "a b &lt;i&gt;" and md("_x_ y_z") == "\\_x\\_ y_z"


def test_the_reports_summary_escapes_the_names_too(scored_family: dict[str, Path], tmp_path: Path) -> None:
    from evomerge.export.report import write_report

    f = scored_family
    sources = SourcesConfig(f["base"], (f["a"], f["b"]), base_name=HOSTILE[0], names=HOSTILE[1:])
    run = synthetic_run(tmp_path / "run", export_config(f, name="<h1>run<h1> | x", sources=sources), n=6)
    summary = (write_report(run.root, tmp_path / "report", executor_factory=FakeExecutor, quiet=True) / "summary.md")
    lines = summary.read_text().splitlines()
    assert lines[0] == "# Run report: &lt;h1&gt;run&lt;h1&gt; \\| x"
    assert "&lt;script&gt;alert(1)&lt;/script&gt; alone |" in summary.read_text()
    assert "<" not in re.sub(r"(`+).*?\1", "", "\n".join(line for line in lines if not line.startswith("![")))
