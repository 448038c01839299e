"""How evomerge replaces what it writes: in one rename, so a reader (or a stop) never meets half a file or folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """``path`` holds ``text`` or what it held before, never a part: the text goes to a sibling, then one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``. An old ``out`` is set aside first, restored if the move fails,
    and removed only once the new one is in place."""
    if not (out.exists() or out.is_symlink()):
        tmp.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent)) / "old"
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    finally:
        shutil.rmtree(old.parent, ignore_errors=True)
