"""One way to write a file for the whole package: atomically.

:func:`atomic_write` writes through a temporary file in the target's folder and renames it over the target
(``os.replace`` is atomic on POSIX and Windows), so a reader -- or a session that ends abruptly -- never sees a
half-written checkpoint, manifest, cache or notebook: either the old file or the new one.

Beside it, what every writer and reader of checkpoints shares: :func:`sha256_file` (the content hash recorded
next to checkpoint files and checked when they are loaded), :func:`check_writable_dir` (a run proves it can
write its output *before* it trains) and :func:`shown_path` (how an error message names a file).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "sha256_file", "shown_path", "check_writable_dir"]


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


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The hex sha256 of a file's bytes (recorded beside checkpoints, checked when they are loaded)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def shown_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working folder when it lies inside it (``data/pretrained/x.json``), else absolute."""
    p = Path(path).absolute()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def check_writable_dir(path: str | os.PathLike, what: str = "output folder", note: str = "nothing was trained") -> Path:
    """Create ``path`` (and its parents) if needed and prove a file can be written there, *before* a long run
    finds out at its first save. Raises ``PermissionError`` / ``NotADirectoryError`` naming the path (and ``note``)."""
    path = Path(path)
    note = f" ({note})" if note else ""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(
            f"the {what} {shown_path(path)} is a file, not a folder; choose another path{note}"
        ) from None
    except OSError as err:
        raise PermissionError(
            f"cannot create the {what} {shown_path(path)} ({err.strerror or err}); choose a path you can write to "
            f"or fix its permissions{note}"
        ) from err
    try:
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.remove(tmp)
    except OSError as err:
        raise PermissionError(
            f"cannot write to the {what} {shown_path(path)} ({err.strerror or err}); choose a path you can write to "
            f"or fix its permissions{note}"
        ) from err
    return path
