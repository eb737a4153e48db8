"""The state file before the store opens it: one agent per file, and no crash loop on a bad one.

- **One agent per file.** An exclusive ``flock`` on ``<state>.lock`` (next to the database),
  held for the agent's life; a second agent on the same file is refused with a message naming
  the holder's pid. Two agents on one file would interleave streaks and corrupt them.
- **A corrupt file is moved aside**, not fatal: a file that is not a SQLite database, or that
  fails ``PRAGMA quick_check``, is renamed ``<name>.corrupt-<UTC timestamp>`` (its ``-wal``
  and ``-shm`` with it), one error is logged and the agent starts from an empty state; the
  next sweep rebuilds every gauge. Kubernetes would otherwise restart the pod forever.
- A file that merely cannot be opened or written (permissions, a read-only volume, a full
  disk) is *not* corruption: it is left alone; a sweep that cannot write fails visibly with
  the reason from :func:`write_failure_reason`, keeps the last gauges and recovers by itself
  when the disk has room again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_CORRUPT_MESSAGES = ("file is not a database", "database disk image is malformed",
                     "file is encrypted or is not a database")


class StateFileError(RuntimeError):
    """The state file cannot be used; the message says why and what to do."""


class StateFileLocked(StateFileError):
    """Another agent holds the state file."""


@dataclass
class StateFile:
    path: Path
    recovered_to: Path | None = None  # where a corrupt file was moved, if it was
    _lock_fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None


def _lock(path: Path) -> int | None:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        log.warning("cannot create the state lock file path=%s err=%s: running without the "
                    "one-agent-per-file guard", lock_path, exc.strerror)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StateFileLocked(
            f"state file {path} is in use by another agent (pid {holder}, lock {lock_path}): "
            "two agents on one file would corrupt streaks; give each agent its own "
            "state.path") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _corruption(path: Path) -> str | None:
    """Why the file is not a usable database, or None (also when it cannot be read at all)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=5)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        # Anything else (permissions, no space, a locked file) is for the store to report.
        text = str(exc)
        return text if any(m in text for m in _CORRUPT_MESSAGES) else None
    problems = [r[0] for r in rows if r and r[0] != "ok"]
    return "; ".join(problems[:3]) if problems else None


def _move_aside(path: Path, now: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    os.replace(path, target)
    return target


def open_state_file(path: str | Path, *, clock=time.time) -> StateFile:
    """Lock the state file for this agent and move it aside if it is corrupt.

    Raises :class:`StateFileLocked` when another agent holds it.
    """
    path = Path(path)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    state = StateFile(path, _lock_fd=_lock(path))
    try:
        why = _corruption(path)
        if why is not None:
            try:
                state.recovered_to = _move_aside(path, clock())
            except OSError as exc:
                raise StateFileError(f"state file {path} is corrupt ({why}) and cannot be "
                                     f"moved aside ({exc.strerror}): remove it") from None
            log.error("state file is corrupt, moved aside and starting from an empty state "
                      "path=%s moved_to=%s reason=%r", path, state.recovered_to, why)
    except BaseException:
        state.release()
        raise
    return state


# SQLite result codes (Python 3.11+: ``exc.sqlite_errorname``) by reason label. A file-size
# limit (RLIMIT_FSIZE, EFBIG) comes back as SQLITE_IOERR_WRITE, a full disk (ENOSPC) as
# SQLITE_FULL.
_WRITE_FAILURES = (
    ("disk_full", ("SQLITE_FULL",)),
    ("read_only", ("SQLITE_READONLY", "SQLITE_PERM", "SQLITE_CANTOPEN")),
    ("locked", ("SQLITE_BUSY", "SQLITE_LOCKED")),
    ("corrupt", ("SQLITE_CORRUPT", "SQLITE_NOTADB")),
    ("io_error", ("SQLITE_IOERR",)),
)


def write_failure_reason(exc: BaseException) -> str | None:
    """``disk_full``, ``read_only``, ``locked``, ``corrupt`` or ``io_error`` when ``exc`` is a
    SQLite error from the environment, else None (a bug, not something an operator fixes).
    An exception group (a sweep's task group) gives the reason of its first such error."""
    if isinstance(exc, BaseExceptionGroup):
        reasons = (write_failure_reason(e) for e in exc.exceptions)
        return next((r for r in reasons if r is not None), None)
    if not isinstance(exc, sqlite3.Error):
        return None
    name = getattr(exc, "sqlite_errorname", None) or ""
    for reason, prefixes in _WRITE_FAILURES:
        if name.startswith(prefixes):
            return reason
    text = str(exc)
    if any(m in text for m in _CORRUPT_MESSAGES):
        return "corrupt"
    return "io_error" if isinstance(exc, sqlite3.OperationalError) else None
