"""The one owner of the state database: its connections, its schema and its one writer thread.

Every feature that keeps something in the state file goes through a :class:`StateDatabase`:
the tracker (accounts, :mod:`.accounts`), the repair loop (:mod:`.remediation`), the webhook
inbox (:mod:`.inbox`), the institution history (:mod:`.history`), the routing advice
(:mod:`.routing`) and the refresh-lag counts (:mod:`.lag`). No SQL lives outside this package.

- **One writer connection on one thread.** ``await db.write(fn, *args)`` runs ``fn`` on the
  single ``state-writer`` thread, in the order the calls were made; every write of every
  feature (and the reads that must see them) runs there, so SQLite never blocks the event
  loop (it releases the GIL while it works) and the connection is never used by two threads.
  A unit of work is one short transaction: the tracker writes per chunk, the inbox per group
  commit, the repair loop per step. A unit that leaves a transaction open (a bug) is rolled
  back after it, so it cannot hold the other features' writes.
- **Express units** (``write(..., express=True)``: the webhook inbox's, a listener waits for
  their commit before it answers) do not queue behind a sweep's chunk: a long unit lets
  the express units queued meanwhile run at its safe points (:meth:`StateDatabase.interleave`,
  between reading a chunk's rows, applying the rule and writing the chunk; never inside a
  transaction). They overtake other features' units, never each other; an express unit
  touches only its own feature's tables.
- **Reads that scan much** (the refresh-lag counts grouped over ``accounts``, the
  institution history for the status page) run with ``await db.read(fn, *args)`` on a
  ``state-reader`` thread, on a read-only connection of their own: WAL lets them read a
  consistent snapshot while the writer works, without waiting for it nor holding it up.
- **Schema** (:mod:`.schema`): the tracker's tables are migrated by ``PRAGMA user_version``
  when the writer connection opens; a feature's tables are created (and migrated in place)
  at its first use, by :meth:`StateDatabase.tables`. So a state file that cannot be written
  (read-only, full) fails that use with :data:`StateError` (the reason from
  :func:`~exporter.state.file.write_failure_reason`), never the agent's start.

The file is locked and checked by :func:`~exporter.state.file.open_state_file` before the
agent builds its database; tools (``remediation release``) open one alongside a running agent
(SQLite serialises the writers, ``busy_timeout`` 10 s).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from exporter.state.schema import FEATURES, migrate_accounts

log = logging.getLogger(__name__)
T = TypeVar("T")

StateError = sqlite3.Error
"""What a read or write of the state database raises when the file refuses (read-only, full,
locked, corrupt): the features catch this name, never ``sqlite3`` itself."""
StateOperationalError = sqlite3.OperationalError


class StateDatabase:
    """The state file's writer connection and thread, and its read-only reader."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="state-writer")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="state-reader")
        self._db: sqlite3.Connection | None = None
        self._ro: sqlite3.Connection | None = None
        self._ready: set[str] = set()
        """features whose tables exist on the writer connection"""
        self._ro_lock = threading.RLock()
        self._express: deque[tuple[Callable[..., Any], tuple, concurrent.futures.Future]] = deque()
        self.closed = False

    # -- the writer --------------------------------------------------------------------------

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer connection, opened (and the tracker's tables migrated) at first use.
        Only on the writer thread (or before/after it runs: tests, tools)."""
        if self._db is None:
            with contextlib.suppress(OSError):
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None,
                                 check_same_thread=False)
            try:
                db.execute("PRAGMA busy_timeout = 10000")
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute("PRAGMA cache_size = -32768")  # 32 MiB of pages, bounded
                migrate_accounts(db, self.path)
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    def tables(self, feature: str) -> sqlite3.Connection:
        """The writer connection with ``feature``'s tables created (the first time; a
        failure raises :data:`StateError` and is tried again at the next use)."""
        db = self.connection
        if feature not in self._ready:
            FEATURES[feature](db)
            self._ready.add(feature)
        return db

    async def write(self, fn: Callable[..., T], *args: Any, express: bool = False) -> T:
        """Run ``fn(*args)`` on the writer thread, after the work queued before it (an
        ``express`` unit: after the express units queued before it, at the next safe point
        of a long unit at the latest)."""
        if not express:
            return await asyncio.get_running_loop().run_in_executor(
                self._writer, self._unit, fn, args)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._express.append((fn, args, done))
        self._writer.submit(self.interleave)
        return await asyncio.wrap_future(done)

    def interleave(self) -> None:
        """On the writer thread, at a safe point of a long unit (no transaction open): run the
        express units queued meanwhile, in order."""
        if self._db is not None and self._db.in_transaction:
            return
        express = self._express
        while express:
            fn, args, done = express.popleft()
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(self._unit(fn, args))
                except BaseException as exc:
                    done.set_exception(exc)

    run = write

    def write_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`write` for code without an event loop (construction, command-line tools):
        blocks until ``fn`` ran on the writer thread. Never call it from that thread."""
        return self._writer.submit(self._unit, fn, args).result()

    def _unit(self, fn: Callable[..., T], args: tuple) -> T:
        try:
            return fn(*args)
        finally:
            db = self._db
            if db is not None and db.in_transaction:  # a bug: never hold the others' writes
                log.error("a state database unit left its transaction open; rolled back")
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")

    # -- the reader --------------------------------------------------------------------------

    @property
    def reader(self) -> sqlite3.Connection:
        """The read-only connection (on the reader thread), opened at first use; a read that
        failed closes it, so the next opens the file afresh."""
        if self._ro is None:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._ro = sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None,
                                       check_same_thread=False)
        return self._ro

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the reader thread (``fn`` uses :attr:`reader`)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._reader, self.read_sync, fn, *args)

    def read_sync(self, fn: Callable[..., T], *args: Any) -> T:
        with self._ro_lock:
            try:
                return fn(*args)
            except sqlite3.Error:
                self._close_reader()
                raise

    def _close_reader(self) -> None:
        if self._ro is not None:
            self._ro.close()
            self._ro = None

    # -- closing -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Wait for the queued work, checkpoint the WAL and close (once)."""
        if self.closed:
            return
        await asyncio.get_running_loop().run_in_executor(self._reader, self._close_reader)
        await self.write(self._close)
        self._shutdown()

    def close_sync(self) -> None:
        """:meth:`close` without an event loop (tests, tools)."""
        if self.closed:
            return
        self._reader.submit(self._close_reader).result()
        self.write_sync(self._close)
        self._shutdown()

    def _shutdown(self) -> None:
        self.closed = True
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)

    def _close(self) -> None:
        db, self._db = self._db, None
        self._ready.clear()
        if db is None:
            return
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:  # a read-only or full disk: the WAL stays, nothing lost
            log.warning("state not checkpointed at close path=%s error=%s", self.path, exc)
        db.close()


class FeatureTables:
    """A feature's tables on the state database's writer connection (its methods block: the
    feature calls them through :meth:`StateDatabase.write`)."""

    feature: str

    def __init__(self, database: StateDatabase):
        self.database = database

    @property
    def db(self) -> sqlite3.Connection:
        """The writer connection, with this feature's tables."""
        return self.database.tables(self.feature)

    @contextlib.contextmanager
    def transaction(self):
        """One write transaction (``BEGIN IMMEDIATE``), rolled back on any error."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close the database (tools and tests that opened it for this feature alone; the
        agent closes its database itself, last)."""
        self.database.close_sync()
