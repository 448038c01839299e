"""How evomerge replaces what it writes: in one rename, so a reader (or a stop) never meets half a file or folder;
and how two processes take turns at writing the same thing (a lock file)."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


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


@contextmanager
def exclusive(path: Path, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock on the file ``path``, which its holder removes, for work that two processes must not do at
    once (a statistics file, a family build): a waiter that gets the lock of a file removed meanwhile tries again on
    the new one. A killed holder's file stays, unlocked, until the next holder removes it. Yields whether the lock is
    held: with ``wait`` False, False at once while another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when closed, also
            except BlockingIOError:  # by a killed process
                yield False
                return
            try:
                current = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                try:
                    yield True
                finally:
                    os.unlink(path)
                return
        finally:
            os.close(fd)
