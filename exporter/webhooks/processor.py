"""Turns accepted webhook events into owner re-reads applied like a partial sweep.

Pending inbox rows are grouped per (source, owner): however many events an owner got, one
re-read (``Source.refresh_owner``) answers them all, through the source's own client (token,
rate limit, retries). Its records go to ``Tracker.apply_records``, and the rows are marked
done only after that, so a crash in between re-reads the owner again after restart (a
re-read is idempotent). A failed re-read is retried with exponential backoff until
``give_up_after`` (the next poll still sees the owner). At most ``concurrency`` owners are
re-read at once; an owner with a re-read in flight waits for it, so an event that arrived
during a re-read gets a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from exporter.records import AccountStatus
from exporter.webhooks.inbox import InboxError, PendingEvent, WebhookInbox
from exporter.webhooks.observer import WebhookObserver

log = logging.getLogger(__name__)


class RefreshSource(Protocol):
    """The part of ``exporter.sources.base.Source`` push needs (INTERFACES.md §3)."""

    name: str
    provider: str

    def owns(self, owner_id: str) -> bool: ...

    async def refresh_owner(self, owner_id: str) -> list[AccountStatus]: ...


class RecordSink(Protocol):
    """The part of the tracker push needs (INTERFACES.md §2)."""

    async def apply_records(self, source: str, provider: str,
                            records: Sequence[AccountStatus]) -> None: ...


class PushProcessor:
    def __init__(self, inbox: WebhookInbox, sources: Mapping[str, RefreshSource],
                 tracker: RecordSink, observer: WebhookObserver, *,
                 clock: Callable[[], float] = time.time, concurrency: int = 4,
                 backoff: float = 2.0, backoff_max: float = 300.0,
                 give_up_after: float = 21_600.0, prune_every: float = 600.0,
                 batch: int = 1000):
        self.inbox = inbox
        self.sources = sources
        self.tracker = tracker
        self.observer = observer
        self.clock = clock
        self.concurrency = concurrency
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.give_up_after = give_up_after
        self.prune_every = prune_every
        self.batch = batch
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._next_prune = 0.0

    def wake(self) -> None:
        """New rows are in the inbox (called by the listener after it committed them)."""
        self._wake.set()

    async def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.create_task(self._run(), name="push-processor")

    async def stop(self) -> None:
        """Cancel re-reads in flight: their rows stay pending and are redone after restart."""
        tasks = [t for t in (self._loop, *self._running.values()) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        self._running.clear()

    async def _run(self) -> None:
        failures = 0
        while True:
            self._wake.clear()
            try:
                await self.dispatch()
                failures = 0
                delay = await self._idle_delay()
            except InboxError as exc:
                failures += 1
                delay = min(self.backoff_max, self.backoff * 2 ** failures)
                log.error("push processor cannot read the inbox, retrying in %.0fs: %s",
                          delay, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _idle_delay(self) -> float:
        next_due = await self.inbox.next_due()
        if next_due is None:
            return self.prune_every
        return min(self.prune_every, max(0.0, next_due - self.clock()))

    async def dispatch(self) -> int:
        """Start a re-read for each due owner not already being re-read, up to the
        concurrency; returns how many were started."""
        now = self.clock()
        if now >= self._next_prune:
            self._next_prune = now + self.prune_every
            pruned = await self.inbox.prune(now)
            if pruned:
                log.debug("webhook inbox: pruned %d expired dedupe keys", pruned)
        if len(self._running) >= self.concurrency:
            return 0
        groups: dict[tuple[str, str], list[PendingEvent]] = defaultdict(list)
        for row in await self.inbox.due(now, self.batch):
            key = (row.source, row.owner)
            if key not in self._running:
                groups[key].append(row)
        started = 0
        for key, rows in groups.items():
            if len(self._running) >= self.concurrency:
                break
            task = asyncio.create_task(self._process(key[0], key[1], rows))
            self._running[key] = task
            task.add_done_callback(lambda _t, k=key: self._finished(k))
            started += 1
        return started

    def _finished(self, key: tuple[str, str]) -> None:
        self._running.pop(key, None)
        self._wake.set()

    async def drain(self) -> None:
        """Process until nothing is due or running (tests, tools)."""
        while await self.dispatch() or self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def _process(self, name: str, owner: str, rows: list[PendingEvent]) -> None:
        ids = [r.id for r in rows]
        source = self.sources.get(name)
        try:
            if source is None or not source.owns(owner):
                # The source left the configuration, or the shard moved: the poll decides.
                log.debug("push: %s no longer handled here, %d events dropped", name, len(ids))
                await self.inbox.mark_done(ids, self.clock())
                return
            try:
                records = await source.refresh_owner(owner)
                await self.tracker.apply_records(source.name, source.provider, records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(name, rows, exc)
                return
            done = self.clock()
            await self.inbox.mark_done(ids, done)
            for row in rows:
                self.observer.push_refresh(name, max(0.0, done - row.received_at))
            log.debug("push: source=%s owner=%s events=%d records=%d", name, owner, len(rows),
                      len(records))
        except InboxError as exc:
            log.error("push: cannot update the inbox (events stay pending): %s", exc)

    async def _failed(self, name: str, rows: list[PendingEvent], exc: Exception) -> None:
        now = self.clock()
        ids = [r.id for r in rows]
        if now - min(r.received_at for r in rows) >= self.give_up_after:
            log.warning("push: source=%s giving up on an owner's re-read after %d attempts "
                        "(the poll will see it): %s", name, max(r.attempts for r in rows) + 1,
                        type(exc).__name__)
            await self.inbox.mark_done(ids, now)
            return
        attempts = max(r.attempts for r in rows)
        delay = min(self.backoff_max, self.backoff * 2 ** attempts) * random.uniform(0.5, 1.0)
        log.warning("push: source=%s re-read failed (%s), retrying in %.1fs", name,
                    type(exc).__name__, delay)
        await self.inbox.retry_later(ids, now + delay)
