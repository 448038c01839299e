"""What the benchmark scripts share: their environment, the machine's description, the zoo config,
and docs/BENCHMARKS.md, where each script owns one section between its start/end markers.

Import it before torch or any Hugging Face library: importing sets the offline defaults (no hub here)
and puts the repository on ``sys.path`` (the scripts run as ``python scripts/NAME.py``, which puts
``scripts/`` there)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from evomerge.config.search import SearchConfig

REPO = Path(__file__).resolve().parents[1]
ENVIRONMENT = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "RAY_AUTH_MODE": "disabled"}
for _name, _value in ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HEADER = "# Benchmarks\n\nMeasured numbers; each section is written by the script it names.\n\n"


def shown(path: str | Path) -> str:
    """A path as a command line should show it: relative inside the repo, absolute outside."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``<!-- name:end -->``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    section = f"{start}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.is_file() else HEADER
    if start in text and end in text:
        head, rest = text.split(start, 1)
        after = rest.split(end, 1)[1].lstrip("\n")
        text = head + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def publish(out: str | Path, name: str, body: str, *, write: bool = True) -> None:
    """Print a script's section and (unless ``write`` is off: ``--no-write``) replace it in ``out``."""
    print()
    print(body)
    if write:
        write_section(Path(out), name, body)
        print(f"\nwrote {out}")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def zoo_config(path: Path) -> "SearchConfig":
    """A search config over the zoo; the default zoo is built (minutes, cached) if it is not there yet. A config that
    cannot be used stops the script with one line on stderr and exit code 2, as evomerge's CLI does."""
    from evomerge.config.search import load_config
    from evomerge.errors import EvomergeError

    if not path.is_file():
        fail(f"{path} not found: pass --config with a search config over the zoo")
    try:
        return load_config(path)
    except EvomergeError as e:  # most likely: the zoo the config points at is not built yet
        zoo_dir = REPO / "zoo" / "seed0-llama"  # what scripts/demo builds: build it here too
        if "zoo/seed0-llama" not in path.read_text() or zoo_dir.is_dir():
            fail(f"{path}: {e}")
        print(f"building the zoo in {zoo_dir} first (minutes; {e})", flush=True)
    from evomerge.zoo import build_zoo

    build_zoo(zoo_dir, seed=0)
    return load_config(path)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)
