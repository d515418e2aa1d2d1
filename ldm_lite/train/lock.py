"""One run per ``out_dir``: the run lock.

One process trains in an ``out_dir`` at a time: ``fit`` holds the lock file ``out_dir/run.lock`` (the
owner's pid, host and process start time; taken with ``O_CREAT | O_EXCL``, removed when ``fit`` returns
or raises). A second process on the same folder gets :class:`RunLockedError` naming the pid, before it
trains; a lock left by a process that no longer runs (``kill -9``, a power cut) is taken over.

The lock is re-entrant within a process (``experiments.train_ldm`` takes it before loading data, and its
``Trainer.fit`` takes it again). It stands alone: nothing else of :mod:`ldm_lite.train` is needed here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

from ldm_lite.io import shown_path

__all__ = ["RunLock", "RunLockedError", "acquire_run_lock", "check_run_lock", "pid_alive", "LOCK_NAME"]


class RunLockedError(FileExistsError):
    """Another live process holds the run lock of this ``out_dir`` (it is training there right now)."""

    def __init__(self, message: str, pid: int | None = None, host: str | None = None):
        super().__init__(message)
        self.pid, self.host = pid, host


LOCK_NAME = "run.lock"
_HELD_LOCKS: dict[str, "RunLock"] = {}  # resolved lock path -> the lock this process holds (re-entrant)


def _host() -> str:
    return socket.gethostname()


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return data.rsplit(")", 1)[-1].split()


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), to tell it from a later process that
    reuses the number; None where /proc is unavailable."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (a zombie -- exited, not yet reaped -- counts as dead)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        try:
            code = ctypes.c_ulong()
            kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    fields = _proc_stat(pid)
    return not (fields and fields[0] == "Z")


def _read_lock(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) and isinstance(owner.get("pid"), int) else None


def _lock_owner_alive(owner: dict) -> bool:
    """Whether the process that wrote a lock still runs. A lock of another machine counts as alive (its process
    cannot be seen from here); one with this process's own pid that this process does not hold is left from an
    earlier process with the same number (e.g. a restarted container)."""
    if owner.get("host") not in (None, _host()):
        return True
    pid = owner["pid"]
    if pid == os.getpid():
        return False
    if not pid_alive(pid):
        return False
    started, now = owner.get("started_ticks"), _process_start(pid)
    return started is None or now is None or started == now


def _locked_message(out_dir: Path, owner: dict) -> str:
    host = owner.get("host")
    where = "" if host in (None, _host()) else f" on host {host}"
    hint = (f" (if no run is writing there any more, delete {shown_path(out_dir / LOCK_NAME)})" if where else "")
    return (f"another run (pid {owner['pid']}{where}) is writing to out_dir {shown_path(out_dir)}; wait for it to "
            f"finish or choose another out_dir{hint}")


class RunLock:
    """The lock file ``out_dir/run.lock`` (JSON: pid, host, start time of the process) that says one process
    trains in ``out_dir``. Taken atomically (``O_CREAT | O_EXCL``); a lock whose process is dead is taken over;
    re-entrant within a process (``train_ldm`` holds it and its ``Trainer.fit`` takes it again). ``release()``
    removes the file once the outermost holder releases it (also after an exception)."""

    def __init__(self, path: Path, key: str, token: str):
        self.path, self.key, self.token, self.count = path, key, token, 1

    def release(self) -> None:
        self.count -= 1
        if self.count > 0:
            return
        _HELD_LOCKS.pop(self.key, None)
        owner = _read_lock(self.path)
        if owner is not None and owner.get("token") == self.token:
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def check_run_lock(out_dir: str | os.PathLike) -> None:
    """Raise :class:`RunLockedError` if another live process holds ``out_dir``'s run lock (reads only)."""
    out_dir = Path(out_dir)
    path = out_dir / LOCK_NAME
    if not path.is_file() or str(path.resolve()) in _HELD_LOCKS:
        return
    owner = _read_lock(path)
    if owner is not None and _lock_owner_alive(owner):
        raise RunLockedError(_locked_message(out_dir, owner), owner["pid"], owner.get("host"))


def acquire_run_lock(out_dir: str | os.PathLike) -> RunLock:
    """Take ``out_dir``'s run lock (the folder must exist) or raise :class:`RunLockedError` naming the pid
    of the live process that holds it. A lock left by a dead process is taken over."""
    out_dir = Path(out_dir)
    path = out_dir / LOCK_NAME
    key = str(path.resolve())
    held = _HELD_LOCKS.get(key)
    if held is not None:
        held.count += 1
        return held
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": _host(), "started_ticks": _process_start(os.getpid()), "token": token}
    for _ in range(200):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read_lock(path)
            if owner is None:  # being written this instant, or left empty by a crash right after creating it
                try:
                    age = time.time() - path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age < 5:
                    time.sleep(0.05)
                    continue
            elif _lock_owner_alive(owner):
                raise RunLockedError(_locked_message(out_dir, owner), owner["pid"], owner.get("host")) from None
            # a dead process's lock: move it aside under a unique name (only one taker can), then check that
            # what was moved is the dead lock and not one a faster taker has just written
            aside = path.with_name(f"{LOCK_NAME}.stale-{token}")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            moved = _read_lock(aside)
            if moved is not None and (owner is None or moved.get("token") != owner.get("token")):
                with contextlib.suppress(OSError):  # not the lock judged dead: put it back (unless taken anew)
                    os.link(aside, path)
            with contextlib.suppress(OSError):
                os.remove(aside)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        lock = RunLock(path, key, token)
        _HELD_LOCKS[key] = lock
        return lock
    raise RunLockedError(f"could not take the lock {shown_path(path)} of out_dir {shown_path(out_dir)}; is another "
                         "run starting there? Choose another out_dir")
