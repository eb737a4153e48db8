"""The durable inbox: verified deliveries land here before they are answered.

Its own tables in the state database (INTERFACES.md §4) on its own connection, used from one
worker thread so SQLite never blocks the event loop. One row per (source, dedupe key, owner):
the unique index makes a redelivery a no-op, also across restarts, and the row stays (done)
until its key's retry window has passed, then :meth:`WebhookInbox.prune` drops it. Requests
that arrive together are written in one transaction (group commit). WAL with
``synchronous=NORMAL``: a committed row survives the process being killed (not a power cut).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from exporter.sources.notices import Delivery

T = TypeVar("T")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS webhook_inbox (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        owner TEXT NOT NULL,
        kind TEXT NOT NULL,
        received_at REAL NOT NULL,
        keep_until REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        done_at REAL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS webhook_inbox_key "
    "ON webhook_inbox (source, dedupe_key, owner)",
    "CREATE INDEX IF NOT EXISTS webhook_inbox_pending ON webhook_inbox (id) WHERE done_at IS NULL",
    """CREATE TABLE IF NOT EXISTS webhook_secrets (
        source TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        first_seen REAL NOT NULL,
        PRIMARY KEY (source, fingerprint)
    ) WITHOUT ROWID""",
)
_INSERT = ("INSERT OR IGNORE INTO webhook_inbox (source, dedupe_key, owner, kind, received_at, "
           "keep_until, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
_IN_CHUNK = 500


class InboxError(Exception):
    """The inbox cannot be opened or written (corrupt, unwritable or locked database)."""


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An accepted event whose re-read has not been applied yet."""

    id: int
    source: str
    owner: str
    kind: str
    received_at: float
    attempts: int
    next_attempt_at: float = 0.0


class WebhookInbox:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webhook-inbox")
        self._db: sqlite3.Connection | None = None
        self._batch: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise InboxError(f"webhook inbox {self.path}: {exc}") from exc

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables if needed; raises :class:`InboxError` with a clear reason."""
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                             timeout=10.0)
        try:
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                db.execute(statement)
        except sqlite3.Error:
            db.close()
            raise
        self._db = db

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    # -- writing (group commit) ----------------------------------------------------------

    async def _write(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``op`` in a write transaction shared with the writes queued meanwhile; returns
        once it is committed."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batch.append((op, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                results = await self._run(self._commit, [op for op, _ in batch])
            except InboxError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)

    def _commit(self, ops: list[Callable[[sqlite3.Connection], Any]]) -> list[Any]:
        db = self._db
        if db is None:
            raise sqlite3.ProgrammingError("the inbox is not open")
        db.execute("BEGIN IMMEDIATE")
        try:
            results = [op(db) for op in ops]
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return results

    async def put(self, source: str, delivery: Delivery,
                  received_at: float) -> list[PendingEvent]:
        """Persist an accepted delivery, one row per owner; returns the rows that are new
        (none: a redelivery). Returns only after they are committed."""
        def op(db: sqlite3.Connection) -> list[PendingEvent]:
            new = []
            for owner in delivery.owners:
                cur = db.execute(_INSERT, (source, delivery.dedupe_key, owner, delivery.kind,
                                           received_at, received_at + delivery.keep_for,
                                           received_at))
                if cur.rowcount > 0:
                    new.append(PendingEvent(cur.lastrowid, source, owner, delivery.kind,
                                            received_at, 0))
            return new
        return await self._write(op)

    async def first_seen(self, source: str, fingerprint: str, now: float) -> float:
        """When this agent first saw a (previous) secret with this fingerprint."""
        def op(db: sqlite3.Connection) -> float:
            db.execute("INSERT OR IGNORE INTO webhook_secrets VALUES (?, ?, ?)",
                       (source, fingerprint, now))
            return db.execute("SELECT first_seen FROM webhook_secrets WHERE source = ? AND "
                              "fingerprint = ?", (source, fingerprint)).fetchone()[0]
        return await self._write(op)

    # -- processing ------------------------------------------------------------------------

    async def pending(self) -> list[PendingEvent]:
        """Every row not done yet, oldest first (read once at start)."""
        def run() -> list[PendingEvent]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT id, source, owner, kind, received_at, attempts, next_attempt_at "
                "FROM webhook_inbox WHERE done_at IS NULL ORDER BY id").fetchall()
            return [PendingEvent(*row) for row in rows]
        return await self._run(run)

    async def mark_done(self, ids: Sequence[int], now: float) -> None:
        await self._write(lambda db: _update_ids(
            db, "UPDATE webhook_inbox SET done_at = ? WHERE id IN ({})", (now,), ids))

    async def retry_later(self, ids: Sequence[int], at: float) -> None:
        await self._write(lambda db: _update_ids(
            db, "UPDATE webhook_inbox SET attempts = attempts + 1, next_attempt_at = ? "
            "WHERE id IN ({})", (at,), ids))

    async def prune(self, now: float) -> int:
        """Drop done rows whose dedupe window has passed; returns how many."""
        return await self._write(lambda db: db.execute(
            "DELETE FROM webhook_inbox WHERE done_at IS NOT NULL AND keep_until < ?",
            (now,)).rowcount)

    async def counts(self) -> tuple[int, int]:
        """(pending, done) rows, for tests and tools."""
        def run() -> tuple[int, int]:
            assert self._db is not None
            return self._db.execute(
                "SELECT count(*) - count(done_at), count(done_at) FROM webhook_inbox").fetchone()
        return await self._run(run)


def _update_ids(db: sqlite3.Connection, sql: str, head: tuple, ids: Sequence[int]) -> None:
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i:i + _IN_CHUNK]
        db.execute(sql.format(",".join("?" * len(chunk))), (*head, *chunk))
