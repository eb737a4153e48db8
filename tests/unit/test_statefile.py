"""exporter/state/file.py: one agent per state file; a corrupt file is moved aside."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.state.file import StateFileError, StateFileLocked, open_state_file

NOW = 1_764_500_000.0  # 2025-11-30T10:53:20Z


def _database(path, rows: int = 50):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE t (x)")
    db.executemany("INSERT INTO t VALUES (?)", [(f"row {i}" * 10,) for i in range(rows)])
    db.commit()
    db.close()


def test_a_healthy_file_is_kept_and_locked(tmp_path):
    path = tmp_path / "state.db"
    _database(path)
    state = open_state_file(path, clock=lambda: NOW)
    try:
        assert state.recovered_to is None
        assert path.exists()
        assert (tmp_path / "state.db.lock").read_text().strip() == str(os.getpid())
    finally:
        state.release()


def test_a_missing_file_is_fine(tmp_path):
    state = open_state_file(tmp_path / "sub" / "state.db")
    assert state.recovered_to is None
    state.release()


@pytest.mark.parametrize("damage", ["not a database", "malformed"])
def test_a_corrupt_file_is_moved_aside_with_its_wal(tmp_path, damage, caplog):
    path = tmp_path / "state.db"
    if damage == "not a database":
        path.write_bytes(b"this is not sqlite\n" * 100)
        (tmp_path / "state.db-wal").write_bytes(b"junk")
    else:
        _database(path, rows=5000)
        assert path.stat().st_size > 12 * 4096
        with path.open("r+b") as f:  # scribble over b-tree pages after the header page
            f.seek(4096)
            f.write(os.urandom(8 * 4096))
    state = open_state_file(path, clock=lambda: NOW)
    state.release()
    assert state.recovered_to == tmp_path / "state.db.corrupt-20251130T105320Z"
    assert state.recovered_to.exists() and not path.exists()
    assert not (tmp_path / "state.db-wal").exists(), "no stale WAL next to the fresh file"
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "moved aside" in errors[0].getMessage()
    store = StateStore(StateDatabase(path))  # starts fresh
    store.close()


def test_a_second_agent_on_the_same_file_is_refused(tmp_path):
    path = tmp_path / "state.db"
    first = open_state_file(path)
    try:
        with pytest.raises(StateFileLocked, match=rf"in use by another agent \(pid {os.getpid()}"):
            open_state_file(path)
        # Another process too (flock is per open file, so this holds across processes).
        code = ("import sys; from exporter.state.file import open_state_file, StateFileLocked\n"
                "try: open_state_file(sys.argv[1])\n"
                "except StateFileLocked as e: print(e); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 3, proc.stderr
        assert "give each agent its own state.path" in proc.stdout
    finally:
        first.release()
    open_state_file(path).release()  # free again once released


def test_a_corrupt_file_that_cannot_move_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "state.db"
    path.write_bytes(b"garbage" * 100)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("exporter.state.file.os.replace", refuse)
    with pytest.raises(StateFileError, match="cannot be moved aside \\(Permission denied\\)"):
        open_state_file(path)
    open_state_file(tmp_path / "other.db").release()  # the failed attempt left no lock behind
    monkeypatch.undo()
    open_state_file(path).release()


def test_write_failures_are_classified_from_real_sqlite_errors(tmp_path, monkeypatch):
    import resource

    from exporter.state.file import write_failure_reason

    path = tmp_path / "state.db"
    _database(path)
    db = sqlite3.connect(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size, hard))
    try:
        with pytest.raises(sqlite3.Error) as full:
            db.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,) for _ in range(500)])
            db.commit()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        db.close()
    # EFBIG from the file-size limit is SQLITE_IOERR_WRITE (a real ENOSPC is SQLITE_FULL).
    assert write_failure_reason(full.value) == "io_error", full.value
    no_space = sqlite3.OperationalError("database or disk is full")
    no_space.sqlite_errorname = "SQLITE_FULL"
    assert write_failure_reason(no_space) == "disk_full"
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.Error) as readonly:
        ro.execute("INSERT INTO t VALUES (1)")
    ro.close()
    assert write_failure_reason(readonly.value) == "read_only"
    assert write_failure_reason(sqlite3.DatabaseError("file is not a database")) == "corrupt"
    assert write_failure_reason(ValueError("a bug")) is None
