"""A feature's tables in the state database, on a connection of their own.

The connection is opened, and the tables created (``IF NOT EXISTS``), at first use, so a
state file that cannot be written (read-only, full) fails that use with ``sqlite3.Error``,
never the agent's start. WAL and a 10 s ``busy_timeout`` as the tracker's writer has; a lock
serialises the callers (blocking methods: call them off the event loop).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class StateTables:
    def __init__(self, path: str | Path, schema: str):
        self.path = Path(path)
        self.lock = threading.Lock()
        self._schema = schema
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (use with :attr:`lock` held)."""
        if self._db is None:
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA busy_timeout = 10000")
                db.execute("PRAGMA journal_mode = WAL")
                db.executescript(self._schema)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The lock and one write transaction (rolled back on any error)."""
        with self.lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None
