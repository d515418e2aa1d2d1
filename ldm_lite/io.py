"""One way to write a file for the whole package: atomically.

:func:`atomic_write` writes through a temporary file in the target's folder and renames it over the target
(``os.replace`` is atomic on POSIX and Windows), so a reader -- or a session that ends abruptly -- never sees a
half-written checkpoint, manifest, cache or notebook: either the old file or the new one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], fsync: bool = False) -> Path:
    """Call ``write(tmp_path)`` to fill a temporary file next to ``path``, then rename it to ``path``.

    The file gets the usual permissions (``0o666`` minus the umask; ``mkstemp`` would leave it owner-only).
    ``fsync``: flush the file and its folder to disk first (checkpoint pointers that must survive a crash).
    On any error the temporary file is removed and the old ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync and hasattr(os, "O_DIRECTORY"):
            dfd = os.open(path.parent, os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
