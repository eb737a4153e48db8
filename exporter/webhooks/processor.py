"""Turns accepted webhook events into owner re-reads applied like a partial sweep.

Pending events are grouped per (source, owner): however many events an owner got, one
re-read (``Source.refresh_owner``) answers them all, through the source's own client (token,
rate limit, retries). Its records go to ``Tracker.apply_records``, and the inbox rows are
marked done only after that, so a crash in between re-reads the owner again after restart
(a re-read is idempotent). Re-reads of a source that finish while an apply is running are
applied together in the next one (group apply: one transaction and one snapshot for all
of them, not one per owner), so under load the tracker's cost per event falls instead of
queueing the re-reads behind each other; if that apply fails, each of its owners is
retried. A failed re-read is retried with exponential backoff until ``give_up_after``
(the next poll still sees the owner). At most ``concurrency`` owners are re-read at once;
an owner with a re-read in flight waits for it, so an event that arrived during a re-read
gets a fresh one.

The queue lives in memory, loaded from the inbox at start and fed by the listener after
each commit: the database is written (done, retry) but never polled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from exporter.aio import complete_even_if_cancelled, wait_for_event
from exporter.records import AccountStatus
from exporter.sources.base import Source
from exporter.tracker import Tracker
from exporter.webhooks.inbox import InboxError, PendingEvent, WebhookInbox
from exporter.webhooks.observer import WebhookObserver

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (source, owner)


class PushProcessor:
    def __init__(self, inbox: WebhookInbox, sources: Mapping[str, Source],
                 tracker: Tracker, observer: WebhookObserver, *,
                 clock: Callable[[], float] = time.time, concurrency: int = 4,
                 backoff: float = 2.0, backoff_max: float = 300.0,
                 give_up_after: float = 21_600.0, prune_every: float = 600.0):
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
        self._pending: dict[Key, list[PendingEvent]] = {}
        self._not_before: dict[Key, float] = {}
        self._running: dict[Key, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._to_apply: dict[str, list[tuple[Sequence[AccountStatus], asyncio.Future[None]]]] = {}
        self._appliers: dict[str, asyncio.Task[None]] = {}
        self._next_prune = 0.0
        self._stopped = False

    def add(self, events: Iterable[PendingEvent]) -> None:
        """Queue committed inbox rows (the listener calls this after each new delivery)."""
        for event in events:
            key = (event.source, event.owner)
            self._pending.setdefault(key, []).append(event)
            if event.next_attempt_at > self._not_before.get(key, 0.0):
                self._not_before[key] = event.next_attempt_at
        self._wake.set()

    async def load(self) -> int:
        """Queue every row left pending by the last run (acknowledged, not yet applied)."""
        rows = await self.inbox.pending()
        self.add(rows)
        return len(rows)

    async def start(self) -> None:
        if self._loop is None:
            await self.load()
            self._loop = asyncio.create_task(self._run(), name="push-processor")

    async def stop(self) -> None:
        """Cancel re-reads in flight: their rows stay pending and are redone after restart."""
        self._stopped = True
        tasks = [t for t in (self._loop, *self._running.values(), *self._appliers.values())
                 if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop = None
        self._running.clear()
        self._appliers.clear()
        self._to_apply.clear()

    @property
    def backlog(self) -> int:
        """Events queued or being re-read."""
        return sum(len(v) for v in self._pending.values())

    async def _run(self) -> None:
        while not self._stopped:
            self._wake.clear()
            await self._prune()
            self.dispatch()
            await wait_for_event(self._wake, self._idle_delay(), clear=False)

    async def _prune(self) -> None:
        now = self.clock()
        if now < self._next_prune:
            return
        self._next_prune = now + self.prune_every
        try:
            pruned = await self.inbox.prune(now)
        except InboxError as exc:
            log.error("webhook inbox: cannot prune expired dedupe keys: %s", exc)
            return
        if pruned:
            log.debug("webhook inbox: pruned %d expired dedupe keys", pruned)

    def _idle_delay(self) -> float:
        now = self.clock()
        waits = [at - now for key, at in self._not_before.items()
                 if key in self._pending and key not in self._running]
        return max(0.0, min([self.prune_every, *waits]))

    def dispatch(self) -> int:
        """Start a re-read for each due owner not already being re-read, up to the
        concurrency; returns how many were started."""
        now = self.clock()
        started = 0
        if self._stopped:
            return 0
        for key in list(self._pending):
            if len(self._running) >= self.concurrency:
                break
            if key in self._running or self._not_before.get(key, 0.0) > now:
                continue
            rows = self._pending.pop(key)
            task = asyncio.create_task(self._process(key, rows))
            self._running[key] = task
            task.add_done_callback(lambda _t, k=key: self._finished(k))
            started += 1
        return started

    def _finished(self, key: Key) -> None:
        self._running.pop(key, None)
        if key not in self._pending:
            self._not_before.pop(key, None)
        self._wake.set()

    async def drain(self) -> None:
        """Process until nothing is due or running (tests, tools)."""
        while self.dispatch() or self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def _process(self, key: Key, rows: list[PendingEvent]) -> None:
        name, owner = key
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
                await self._apply(source, records)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._failed(key, rows, exc)
                return
            # applied: marked done and said so as one step, even when a stop cancels us now
            await complete_even_if_cancelled(self._done(name, rows, len(records)))
        except InboxError as exc:
            # Applied (or dropped) but not marked: the rows are redone after a restart.
            log.error("push: cannot update the webhook inbox: %s", exc)

    async def _done(self, name: str, rows: list[PendingEvent], records: int) -> None:
        done = self.clock()
        await self.inbox.mark_done([r.id for r in rows], done)
        for row in rows:
            self.observer.push_refresh(name, max(0.0, done - row.received_at))
        log.debug("push: source=%s re-read one owner events=%d records=%d", name,
                  len(rows), records)

    async def _apply(self, source: Source, records: Sequence[AccountStatus]) -> None:
        """Apply one re-read's records, together with the other re-reads of the source that
        finish before the tracker is free; returns (or raises) once they are applied."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._to_apply.setdefault(source.name, []).append((records, future))
        applier = self._appliers.get(source.name)
        if applier is None or applier.done():
            self._appliers[source.name] = asyncio.create_task(self._apply_batches(source))
        await future

    async def _apply_batches(self, source: Source) -> None:
        waiting = self._to_apply.get(source.name)
        while waiting:
            self._to_apply[source.name] = []
            records = [r for batch, _f in waiting for r in batch]
            try:
                await self.tracker.apply_records(source.name, source.provider, records)
            except Exception as exc:
                for _r, future in waiting:
                    if not future.done():
                        future.set_exception(exc)
            else:
                log.debug("push: source=%s applied %d re-reads together (%d records)",
                          source.name, len(waiting), len(records))
                for _r, future in waiting:
                    if not future.done():
                        future.set_result(None)
            waiting = self._to_apply.get(source.name)

    async def _failed(self, key: Key, rows: list[PendingEvent], exc: Exception) -> None:
        now = self.clock()
        attempts = max(r.attempts for r in rows) + 1
        if now - min(r.received_at for r in rows) >= self.give_up_after:
            log.warning("push: source=%s giving up on an owner's re-read after %d attempts "
                        "(the poll will see it): %s", key[0], attempts, type(exc).__name__)
            self.observer.push_refresh_failed(key[0], "given_up", len(rows))
            await self.inbox.mark_done([r.id for r in rows], now)
            return
        delay = min(self.backoff_max, self.backoff * 2 ** (attempts - 1))
        at = now + delay * random.uniform(0.5, 1.0)
        log.warning("push: source=%s re-read failed (%s), retrying in %.1fs", key[0],
                    type(exc).__name__, at - now)
        self.observer.push_refresh_failed(key[0], "retried", len(rows))
        retry = [PendingEvent(r.id, r.source, r.owner, r.kind, r.received_at, attempts, at)
                 for r in rows]
        self._pending[key] = retry + self._pending.get(key, [])
        self._not_before[key] = at
        await self.inbox.retry_later([r.id for r in rows], at)
