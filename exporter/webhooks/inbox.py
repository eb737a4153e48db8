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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from exporter.webhooks.events import Delivery

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
    "CREATE INDEX IF NOT EXISTS webhook_inbox_due "
    "ON webhook_inbox (next_attempt_at) WHERE done_at IS NULL",
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


@dataclass(frozen=True, slots=True)
class _Put:
    source: str
    delivery: Delivery
    received_at: float


class WebhookInbox:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="webhook-inbox")
        self._db: sqlite3.Connection | None = None
        self._batch: list[tuple[_Put, asyncio.Future[bool]]] = []
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

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise sqlite3.ProgrammingError("the inbox is not open")
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    # -- receiving -------------------------------------------------------------------------

    async def put(self, source: str, delivery: Delivery, received_at: float) -> bool:
        """Persist an accepted delivery (one row per owner); False if every row was already
        there (a redelivery). Returns only after the rows are committed."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._batch.append((_Put(source, delivery, received_at), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._batch:
            batch, self._batch = self._batch, []
            try:
                results = await self._run(self._write, lambda db, b=batch: _insert(db, b))
            except InboxError as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for (_, future), new in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(new)

    async def first_seen(self, source: str, fingerprint: str, now: float) -> float:
        """When this agent first saw a (previous) secret with this fingerprint."""
        def run(db: sqlite3.Connection) -> float:
            db.execute("INSERT OR IGNORE INTO webhook_secrets VALUES (?, ?, ?)",
                       (source, fingerprint, now))
            return db.execute("SELECT first_seen FROM webhook_secrets WHERE source = ? AND "
                              "fingerprint = ?", (source, fingerprint)).fetchone()[0]
        return await self._run(self._write, run)

    # -- processing ------------------------------------------------------------------------

    async def due(self, now: float, limit: int = 1000) -> list[PendingEvent]:
        def run() -> list[PendingEvent]:
            assert self._db is not None
            rows = self._db.execute(
                "SELECT id, source, owner, kind, received_at, attempts FROM webhook_inbox "
                "WHERE done_at IS NULL AND next_attempt_at <= ? "
                "ORDER BY next_attempt_at, id LIMIT ?", (now, limit)).fetchall()
            return [PendingEvent(*row) for row in rows]
        return await self._run(run)

    async def next_due(self) -> float | None:
        """The earliest ``next_attempt_at`` of a pending row."""
        def run() -> float | None:
            assert self._db is not None
            return self._db.execute("SELECT min(next_attempt_at) FROM webhook_inbox "
                                    "WHERE done_at IS NULL").fetchone()[0]
        return await self._run(run)

    async def mark_done(self, ids: Sequence[int], now: float) -> None:
        await self._run(self._write, lambda db: _update_ids(
            db, "UPDATE webhook_inbox SET done_at = ? WHERE id IN ({})", (now,), ids))

    async def retry_later(self, ids: Sequence[int], at: float) -> None:
        await self._run(self._write, lambda db: _update_ids(
            db, "UPDATE webhook_inbox SET attempts = attempts + 1, next_attempt_at = ? "
            "WHERE id IN ({})", (at,), ids))

    async def prune(self, now: float) -> int:
        """Drop done rows whose dedupe window has passed; returns how many."""
        return await self._run(self._write, lambda db: db.execute(
            "DELETE FROM webhook_inbox WHERE done_at IS NOT NULL AND keep_until < ?",
            (now,)).rowcount)

    async def counts(self) -> tuple[int, int]:
        """(pending, done) rows, for tests and tools."""
        def run() -> tuple[int, int]:
            assert self._db is not None
            return self._db.execute(
                "SELECT count(*) - count(done_at), count(done_at) FROM webhook_inbox").fetchone()
        return await self._run(run)


def _insert(db: sqlite3.Connection, batch: Iterable[tuple[_Put, Any]]) -> list[bool]:
    results = []
    for put, _ in batch:
        d = put.delivery
        new = False
        for owner in d.owners:
            cur = db.execute(_INSERT, (put.source, d.dedupe_key, owner, d.kind, put.received_at,
                                       put.received_at + d.keep_for, put.received_at))
            new = new or cur.rowcount > 0
        results.append(new)
    return results


def _update_ids(db: sqlite3.Connection, sql: str, head: tuple, ids: Sequence[int]) -> None:
    for i in range(0, len(ids), _IN_CHUNK):
        chunk = ids[i:i + _IN_CHUNK]
        db.execute(sql.format(",".join("?" * len(chunk))), (*head, *chunk))
