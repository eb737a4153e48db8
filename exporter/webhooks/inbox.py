"""The durable inbox: verified deliveries land here before they are answered.

Its own tables in the state database (INTERFACES.md §4, :mod:`exporter.state.inbox`), written
on the state database's one writer thread, so SQLite never blocks the event loop. One row per
(source, dedupe key, owner): the unique index makes a redelivery a no-op, also across
restarts, and the row stays (done) until its key's retry window has passed, then
:meth:`WebhookInbox.prune` drops it. Requests that arrive together are written in one
transaction (group commit): one short express unit on the writer thread, which a sweep's chunk
lets through between its steps (a listener answers once its row is committed). WAL with ``synchronous=NORMAL``: a committed row survives the process being killed
(not a power cut).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from exporter.sources.notices import Delivery
from exporter.state.database import StateDatabase, StateError
from exporter.state.inbox import InboxTables

T = TypeVar("T")


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
    def __init__(self, database: StateDatabase):
        self.database = database
        self.path = database.path
        self.tables = InboxTables(database)
        self._batch: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._open = False

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await self.database.write(fn, *args, express=True)
        except StateError as exc:
            raise InboxError(f"webhook inbox {self.path}: {exc}") from exc

    # -- life cycle ------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the tables if needed; raises :class:`InboxError` with a clear reason."""
        await self._run(lambda: self.tables.db)
        self._open = True

    async def close(self) -> None:
        """Wait for the writes under way (the agent closes the database itself)."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._open = False

    # -- writing (group commit) ----------------------------------------------------------

    async def _write(self, op: Callable[[], T]) -> T:
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

    def _commit(self, ops: list[Callable[[], Any]]) -> list[Any]:
        if not self._open:
            raise StateError("the inbox is not open")
        with self.tables.transaction():
            return [op() for op in ops]

    async def put(self, source: str, delivery: Delivery,
                  received_at: float) -> list[PendingEvent]:
        """Persist an accepted delivery, one row per owner; returns the rows that are new
        (none: a redelivery). Returns only after they are committed."""
        def op() -> list[PendingEvent]:
            new = []
            for owner in delivery.owners:
                row_id = self.tables.insert(source, delivery.dedupe_key, owner, delivery.kind,
                                            received_at, received_at + delivery.keep_for)
                if row_id is not None:
                    new.append(PendingEvent(row_id, source, owner, delivery.kind,
                                            received_at, 0))
            return new
        return await self._write(op)

    async def first_seen(self, source: str, fingerprint: str, now: float) -> float:
        """When this agent first saw a (previous) secret with this fingerprint."""
        return await self._write(lambda: self.tables.first_seen(source, fingerprint, now))

    # -- processing ------------------------------------------------------------------------

    async def pending(self) -> list[PendingEvent]:
        """Every row not done yet, oldest first (read once at start)."""
        return [PendingEvent(*row) for row in await self._run(self.tables.pending)]

    async def mark_done(self, ids: Sequence[int], now: float) -> None:
        await self._write(lambda: self.tables.mark_done(ids, now))

    async def retry_later(self, ids: Sequence[int], at: float) -> None:
        await self._write(lambda: self.tables.retry_later(ids, at))

    async def prune(self, now: float) -> int:
        """Drop done rows whose dedupe window has passed; returns how many."""
        return await self._write(lambda: self.tables.prune(now))

    async def counts(self) -> tuple[int, int]:
        """(pending, done) rows, for tests and tools."""
        return await self._run(self.tables.counts)
