"""The repair loop, assembled: account events in, episodes and fix requests out.

``RepairLoop.on_events`` is the tracker subscriber (``steady=True``: still-broken accounts
are re-announced every sweep, so an episode missed by a crash is opened on the next one).
``evaluate`` creates the requests that are due (minimum age, no outage, backfill pacing,
storm guard), counts abandoned episodes and refreshes the gauges; it runs every
``evaluate_interval`` and soon after each batch of events. The delivery worker sends the
outbox, paced while a sweep runs (``sweep_started`` … ``sweep_finished``). All SQLite work
runs on one thread of its own, in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from exporter.aio import wait_for_event
from exporter.remediation.config import RemediationConfig
from exporter.remediation.delivery import DeliveryWorker, Endpoint
from exporter.remediation.episodes import (
    BACKFILL_WINDOW,
    REBROKE_WINDOW,
    STORM_WINDOW,
    Episode,
    FleetFacts,
    apply_event,
    fleet_facts,
    login_of,
    rebroke,
    request_body,
    request_decision,
    request_kind,
    storm_limit,
)
from exporter.remediation.observer import NullRemediationObserver, RemediationObserver
from exporter.remediation.renewals import (
    KIND_RENEWAL,
    RENEWED,
    ConsentPeriod,
    apply_consent,
    renewal_body,
    renewal_decision,
)
from exporter.remediation.signing import make_token
from exporter.sources.base import Source
from exporter.state.database import StateDatabase
from exporter.state.remediation import OutboxRow, RemediationStore
from exporter.tracker.events import AccountEvent, EventKind

log = logging.getLogger(__name__)

_PRUNE_AFTER = REBROKE_WINDOW + 86400.0
_WRITE_BATCH = 1000
_PRUNE_EVERY = 3600.0
_QUEUE_BATCHES = 64
FOLDED = "other"
"""The tracker's institution_id (and name) for institutions folded below its size cap."""
Effect = tuple[Any, ...]


class InstitutionLabels:
    """The (institution_id, institution) labels the fleet metrics show for an institution,
    read from the tracker's snapshot, so the per-institution funnel folds small institutions
    into ``other`` exactly where ``openfinance_accounts`` does (bounded like it). A source
    whose snapshot folds nothing (or that it does not hold yet) keeps the episode's labels."""

    def __init__(self, snapshot: Callable[[], Any]):
        self._snapshot = snapshot
        self._seen: Any = None
        self._shown: dict[str, dict[str, str]] = {}

    def __call__(self, source: str, institution_id: str, institution: str) -> tuple[str, str]:
        snap = self._snapshot()
        if snap is not self._seen:
            self._shown = {name: {row[0]: row[1] for row in agg.accounts}
                           for name, agg in getattr(snap, "sources", {}).items()}
            self._seen = snap
        shown = self._shown.get(source, {})
        if institution_id in shown:
            return institution_id, shown[institution_id]
        if FOLDED in shown:
            return FOLDED, FOLDED
        return institution_id, institution


def funnel(ep: Episode, outcome: str | None) -> Effect:
    """A step of the per-institution repair funnel (``None``: the series are created),
    labelled with the code the request was made for (before the request: the current one)."""
    code = ep.request_code if ep.request_code is not None else ep.code
    return ("funnel", ep.source, ep.provider, ep.institution_id, ep.institution, str(code),
            outcome)


class RepairLoop:
    def __init__(self, cfg: RemediationConfig, database: StateDatabase, *,
                 sources: Mapping[str, Source], snapshot: Callable[[], Any],
                 clock: Callable[[], float] = time.time,
                 observer: RemediationObserver | None = None,
                 client: httpx.AsyncClient | None = None,
                 rand: Callable[[], float] = random.random,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex):
        self.cfg = cfg
        self.secret = cfg.secret_bytes()
        self.sources = sources
        self.snapshot = snapshot
        self.clock = clock
        self.observer = observer or NullRemediationObserver()
        self.institution_labels = InstitutionLabels(snapshot)
        self._sweeping: dict[str, int] = {}
        # Which episodes the published facts cover: each batch of events that arrives while
        # a sweep of its source runs, and each publication, takes the next number. An
        # episode changed by a batch numbered after its source's last publication is left
        # for a later evaluation (the facts may predate an outage that sweep reveals); the
        # rest of the source is evaluated even while the next sweep runs.
        self._seq = 0
        self._changed: dict[str, dict[tuple[str, str, str], int]] = {}
        self._published: dict[str, int] = {}
        self._stopping = False
        self.new_id = new_id
        self.database = database
        self.store = RemediationStore(database)
        self._baselines: dict[str, float] = database.write_sync(self.store.baselines)
        self.endpoint = Endpoint(cfg, client)
        self.worker = DeliveryWorker(cfg, self.secret, self.call, self.endpoint, clock,
                                     self.observer, self.link_for, rand, pace=self.pace)
        self._tasks: list[asyncio.Task] = []
        self._queue: asyncio.Queue = asyncio.Queue()
        self._room = asyncio.Semaphore(_QUEUE_BATCHES)
        self._consuming: asyncio.Task | None = None
        self._evaluate_soon = asyncio.Event()
        self._pruned_at = 0.0

    # --- plumbing ---------------------------------------------------------------------------

    async def call(self, method: str, *args: Any) -> Any:
        """Run a store method on the state database's writer thread."""
        return await self.database.write(getattr(self.store, method), *args)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.database.write(fn, *args)

    async def start(self) -> None:
        self._consumer()
        self._tasks += [asyncio.create_task(self.worker.run(), name="remediation-delivery"),
                        asyncio.create_task(self._ticker(), name="remediation-evaluate")]
        log.info("remediation started link=%s backfill=%s", self.cfg.link, self.cfg.backfill)

    async def stop(self, drain_for: float = 10.0) -> None:
        """Fold what is queued (up to ``drain_for`` seconds), stop the tasks, close. Events
        that arrive from now on are dropped (the next sweep re-announces them)."""
        self._stopping = True
        if self._consuming is not None and not self._consuming.done():
            try:
                await asyncio.wait_for(self._queue.join(), timeout=drain_for)
            except TimeoutError:
                log.warning("remediation stopped with %d event batches unread; the next "
                            "sweep re-announces what is still broken", self._queue.qsize())
            self._tasks.append(self._consuming)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._consuming = None
        await self.endpoint.aclose()

    def _consumer(self) -> None:
        if self._consuming is None or self._consuming.done():
            self._consuming = asyncio.create_task(self._consume(), name="remediation-events")

    async def _consume(self) -> None:
        """Fold queued event batches and baselines, in the order the tracker sent them."""
        while True:
            item = await self._queue.get()
            try:
                if item[0] == "baseline":
                    await self._mark_baseline(item[1])
                else:
                    self._room.release()
                    self._report(await self._run(self._apply_events, item[1]))
                    self._evaluate_soon.set()
            except Exception:
                log.exception("remediation could not fold account events; the next sweep "
                              "re-announces what is still broken")
            finally:
                self._queue.task_done()

    async def drained(self) -> None:
        """Until every queued batch has been folded (tests, shutdown)."""
        self._consumer()
        await self._queue.join()

    async def _ticker(self) -> None:
        while True:
            await wait_for_event(self._evaluate_soon, self.cfg.evaluate_interval)
            try:
                await self.evaluate()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("remediation evaluation failed; next try in %.0fs",
                              self.cfg.evaluate_interval)
            await asyncio.sleep(1.0)  # coalesce bursts of event batches

    def _report(self, effects: Sequence[Effect]) -> None:
        o = self.observer
        ignored: Counter[tuple[str, str]] = Counter()
        for effect in effects:
            match effect:
                case ("request", source, provider, kind, result):
                    o.fix_request(source, provider, kind, result)
                case ("outcome", source, provider, outcome):
                    o.fix_outcome(source, provider, outcome)
                case ("resolution", source, provider, category, seconds):
                    o.fix_resolution(source, provider, category, seconds)
                case ("ignored", source, reason):
                    o.fix_event_ignored(source, reason)
                    ignored[(source, reason)] += 1
                case ("pending", counts):
                    o.fix_pending(counts)
                case ("held", counts):
                    o.fix_held(counts)
                case ("funnel", source, provider, institution_id, institution, code, outcome):
                    o.fix_institution(source, provider,
                                      *self.institution_labels(source, institution_id,
                                                               institution),
                                      code, outcome)
        for (source, reason), n in ignored.items():
            log.warning("account events that cannot open an episode source=%s reason=%s count=%d",
                        source, reason, n)

    # --- events -----------------------------------------------------------------------------

    async def on_events(self, events: Sequence[AccountEvent]) -> None:
        """The tracker subscriber: queue a committed chunk's events and return at once, so
        the sweep does not wait for the folding (it waits only when
        ``_QUEUE_BATCHES`` batches are already queued)."""
        if events and self._stopping:
            log.debug("remediation stopped, %d account events dropped (re-announced by the "
                      "next sweep)", len(events))
            return
        if events:
            self._note_unpublished(events)
            self._consumer()
            await self._room.acquire()
            self._queue.put_nowait(("events", list(events)))

    def _note_unpublished(self, events: Sequence[AccountEvent]) -> None:
        """Remember the logins a running sweep changed: the snapshot does not show them yet.
        (Events outside a sweep, from a push re-read, are applied and published together.)"""
        sweeping = [s for s in {ev.source for ev in events} if s in self._sweeping]
        if not sweeping:
            return
        self._seq += 1
        for ev in events:
            if ev.source in self._sweeping:
                login = login_of(ev)
                if login is not None:
                    self._changed.setdefault(ev.source, {})[login] = self._seq

    def pace(self) -> float | None:
        """Deliveries per second allowed now: ``sweep_deliveries_per_second`` while a sweep
        of this agent runs (a sweep and the deliveries share one event loop, and a burst
        delivered at full speed slowed a sweep several-fold), else no limit."""
        return self.cfg.sweep_deliveries_per_second if self._sweeping else None

    def sweep_done(self, source: str, result: str) -> None:
        """The sweep subscriber (``exporter.agent.sweeps.SweepDone``): a sweep of ``source``
        ended with ``result`` (success, partial, failed or cancelled)."""
        if result == "cancelled":
            self.sweep_ended(source, published=False)
        else:
            self.sweep_finished(source, result == "success", published=result != "failed")

    def sweep_finished(self, source: str, complete: bool, published: bool = True) -> None:
        """A sweep of ``source`` ended (``published``: its snapshot is out, i.e. it did not
        fail). After the first complete one, new episodes are no longer backlog: queued
        behind that sweep's events (called by the sweep runner's observer)."""
        self.sweep_ended(source, published)
        if complete and source not in self._baselines:
            self._consumer()
            self._queue.put_nowait(("baseline", source))

    async def _mark_baseline(self, source: str) -> None:
        if source not in self._baselines:
            now = self.clock()
            await self.call("mark_baseline", source, now)
            self._baselines[source] = now
            log.info("remediation baseline done source=%s", source)

    def _apply_events(self, events: list[AccountEvent]) -> list[Effect]:
        """Fold a batch: read and decide first, then write everything in one short
        transaction (the tracker writes to the same file and must not wait long)."""
        effects: list[Effect] = []
        consent = [ev for ev in events if ev.kind is EventKind.CONSENT]
        if consent:  # consent periods are folded apart (and only with renewals on)
            events = [ev for ev in events if ev.kind is not EventKind.CONSENT]
            if self.cfg.renew_before > 0:
                effects += self._fold_consent(consent)
        store = self.store
        current: dict[tuple[str, str, str], Episode | None] = {}
        fixed_here: dict[tuple[str, str, str], Episode] = {}
        touched: dict[int, Episode] = {}
        rebroke_ids: list[int] = []
        cancel_ids: list[str] = []
        by_account: dict[tuple[str, str], tuple[str, str, str]] = {}
        keys = {key for key in map(login_of, events) if key is not None}
        current.update(dict.fromkeys(keys))
        current.update(store.open_episodes(keys))
        fixed_before = store.last_fixed(k for k, ep in current.items() if ep is None)
        self.database.interleave()  # (the inbox's commits queued meanwhile: see StateDatabase)
        for ev in events:
            key = login_of(ev)
            if key is None and ev.kind is EventKind.REMOVED:
                # The tracker does not store ids: find the login through the account.
                key = by_account.get((ev.source, ev.account_key))
                if key is None:
                    found = store.episode_of_account(ev.source, ev.account_key)
                    if found is None:
                        continue
                    key = found.login
                    current.setdefault(key, found)
            if key is None:
                if ev.fixable and ev.kind is not EventKind.LEFT:
                    reason = "no_owner_id" if not ev.owner_id else "no_login_id"
                    effects.append(("ignored", ev.source, reason))
                continue
            if key not in current:
                current[key] = store.open_episode(*key)
            ep, what = apply_event(current[key], ev, backlog=ev.source not in self._baselines)
            if what == "none" or ep is None:
                continue
            touched[id(ep)] = ep
            current[key] = ep
            by_account[(ev.source, ev.account_key)] = key
            if what == "opened":
                effects.append(funnel(ep, None))
                effects += self._rebroke(key, ev.at, fixed_here.get(key),
                                         fixed_before.get(key), rebroke_ids)
            elif what == "closed":
                current[key] = None
                if ep.close_reason == "fixed":
                    fixed_here[key] = ep
                if ep.request_id is not None:
                    cancel_ids.append(ep.request_id)
                effects += self._closed(ep, ev.at)
        if touched or rebroke_ids:
            self.database.interleave()
            store.save_episodes(list(touched.values()), rebroke_ids, cancel_ids, self.clock())
        return effects

    def _fold_consent(self, events: list[AccountEvent]) -> list[Effect]:
        """Fold CONSENT events into the logins' consent periods (one short transaction)."""
        store = self.store
        keys = {key for key in map(login_of, events) if key is not None}
        current: dict[tuple[str, str, str], ConsentPeriod | None] = dict.fromkeys(keys)
        current.update(store.open_periods(keys))
        touched: dict[int, ConsentPeriod] = {}
        effects: list[Effect] = []
        for ev in events:
            key = login_of(ev)
            if key is None:
                continue
            period, ended, what = apply_consent(current[key], ev)
            if what == "none":
                continue
            current[key] = period
            for p in (ended, period):
                if p is not None:
                    touched[id(p)] = p
            if ended is not None and ended.outcome == RENEWED:
                effects.append(("outcome", ended.source, ended.provider, RENEWED))
        if touched:
            store.save_periods(list(touched.values()), self.clock())
        return effects

    @staticmethod
    def _rebroke(key: tuple[str, str, str], now: float, fixed_here: Episode | None,
                 fixed_before: tuple[int, float, str] | None, rebroke_ids: list[int]
                 ) -> list[Effect]:
        """A login that broke again within 7 days of a delivered request's fix (in this
        batch, or earlier)."""
        if fixed_here is not None and fixed_here.delivered_at is not None:
            if fixed_here.rebroke or not rebroke(fixed_here.closed_at, now):
                return []
            fixed_here.rebroke = True
            return [("outcome", fixed_here.source, fixed_here.provider, "rebroke")]
        if fixed_before is None or not rebroke(fixed_before[1], now) or (
                fixed_before[0] in rebroke_ids):
            return []
        rebroke_ids.append(fixed_before[0])
        return [("outcome", key[0], fixed_before[2], "rebroke")]

    @staticmethod
    def _closed(ep: Episode, now: float) -> list[Effect]:
        if ep.close_reason != "fixed" or ep.delivered_at is None or ep.outcome is not None:
            return []
        ep.outcome = "fixed"
        return [("outcome", ep.source, ep.provider, "fixed"), funnel(ep, "fixed"),
                ("resolution", ep.source, ep.provider, ep.request_category or ep.category,
                 max(now - ep.delivered_at, 0.0))]

    # --- evaluation -------------------------------------------------------------------------

    def sweep_started(self, source: str) -> None:
        """A sweep of ``source`` began: deliveries are paced until no sweep runs
        (:meth:`pace`), and the logins its events change wait for its snapshot (the outage
        facts come from the published snapshot, so until then they are older than the
        episodes this sweep opens)."""
        self._sweeping[source] = self._sweeping.get(source, 0) + 1

    def sweep_ended(self, source: str, published: bool = False) -> None:
        """The sweep ended; ``published``: its snapshot is out. A failed or cancelled sweep
        may have stored records the snapshot does not show yet: what it changed waits for a
        sweep that publishes."""
        left = self._sweeping.get(source, 0) - 1
        if left > 0:
            self._sweeping[source] = left
        else:
            self._sweeping.pop(source, None)
        if not self._sweeping:
            self.worker.wake()  # full speed again
        if published:
            self._seq += 1
            self._published[source] = self._seq
            self._evaluate_soon.set()  # what waited for this snapshot is evaluated now

    async def evaluate(self) -> None:
        for source, upto in self._published.items():  # forget what the facts now cover
            changed = self._changed.get(source)
            if changed and min(changed.values()) <= upto:
                self._changed[source] = {k: n for k, n in changed.items() if n > upto}
        published = dict(self._published)  # taken before the facts: never newer than them
        facts = fleet_facts(self.snapshot())
        effects = await self._run(self._evaluate, self.clock(), facts, published)
        self._report(effects)
        self.worker.wake()

    def _unpublished(self, ep: Episode, published: dict[str, int] | None) -> bool:
        """Changed by a sweep whose snapshot the facts do not include yet."""
        n = self._changed.get(ep.source, {}).get(ep.login)
        if n is None:
            return False
        upto = (published if published is not None else self._published).get(ep.source, 0)
        return n > upto

    def _evaluate(self, now: float, facts: FleetFacts,
                  published: dict[str, int] | None = None) -> list[Effect]:
        cfg, store = self.cfg, self.store
        effects: list[Effect] = []
        backfill_left: dict[str, int] = {}
        storm_left: dict[tuple[str, str], int] = {}
        held_now: Counter[tuple[str, str]] = Counter()
        batch: list[tuple[Episode, str, str, str, bool]] = []
        for ep in store.waiting_episodes(cfg.backfill):
            if self._unpublished(ep, published):
                continue  # evaluated again once its sweep's snapshot is published
            if ep.backlog and ep.source not in backfill_left:
                backfill_left[ep.source] = cfg.backfill_per_hour - store.backfill_count(
                    ep.source, now - BACKFILL_WINDOW)
            decision = request_decision(
                ep, now, min_broken_for=cfg.min_broken_for, backfill=cfg.backfill,
                in_outage=(ep.source, ep.institution_id) in facts.outages,
                backfill_left=backfill_left.get(ep.source, 0))
            if decision != "create":
                continue
            held = False
            if ep.backlog:
                backfill_left[ep.source] -= 1
            else:
                held = self._storm_held(ep.source, ep.institution_id, now, facts, storm_left)
                if held:
                    held_now[(ep.source, ep.institution_id)] += 1
            kind = request_kind(ep)
            request_id = self.new_id()
            body = json.dumps(request_body(ep, request_id, kind), separators=(",", ":"),
                              ensure_ascii=False)
            batch.append((ep, request_id, kind, body, held))
            effects.append(funnel(ep, "requested"))
            if held:
                effects.append(("request", ep.source, ep.provider, kind, "held"))
            if len(batch) >= _WRITE_BATCH:
                store.add_requests(batch, now)
                batch = []
                self.database.interleave()
        if batch:
            store.add_requests(batch, now)
        for (source, institution_id), n in held_now.items():
            log.warning("fix requests held by the storm guard source=%s institution_id=%s count=%d",
                        source, institution_id, n)
        self.database.interleave()
        if cfg.renew_before > 0:
            effects += self._renewals(now, facts, storm_left)
        gone = store.abandon_candidates(now - cfg.retry_for - cfg.abandon_after)
        if gone:
            store.set_outcomes([ep.id for ep in gone], "abandoned")
            effects += [("outcome", ep.source, ep.provider, "abandoned") for ep in gone]
            effects += [funnel(ep, "abandoned") for ep in gone]
        if now - self._pruned_at >= _PRUNE_EVERY:
            store.prune(now - _PRUNE_AFTER)
            self._pruned_at = now
        effects.append(("pending", store.pending_counts()))
        effects.append(("held", store.held_counts()))
        return effects

    def _storm_held(self, source: str, institution_id: str, now: float, facts: FleetFacts,
                    storm_left: dict[tuple[str, str], int]) -> bool:
        """Whether one more new request at this institution is held by the storm guard (and
        if not, count it)."""
        at = (source, institution_id)
        if at not in storm_left:
            limit = storm_limit(facts.accounts.get(at, 0), self.cfg.storm_min,
                                self.cfg.storm_share)
            storm_left[at] = limit - self.store.storm_count(*at, now, STORM_WINDOW)
        if storm_left[at] <= 0:
            return True
        storm_left[at] -= 1
        return False

    def _renewals(self, now: float, facts: FleetFacts,
                  storm_left: dict[tuple[str, str], int]) -> list[Effect]:
        """Create the consent_renewal requests that are due (``renew_before`` ahead of the
        end, not while the institution is in an outage, through the storm guard)."""
        store, effects = self.store, []
        held_now: Counter[tuple[str, str]] = Counter()
        batch: list[tuple[ConsentPeriod, str, str, bool]] = []
        expired: list[int] = []
        for period in store.due_periods(now + self.cfg.renew_before):
            decision = renewal_decision(
                period, now, renew_before=self.cfg.renew_before,
                in_outage=(period.source, period.institution_id) in facts.outages)
            if decision == "expired":
                expired.append(period.id)
            if decision != "create":
                continue
            held = self._storm_held(period.source, period.institution_id, now, facts,
                                    storm_left)
            request_id = self.new_id()
            body = json.dumps(renewal_body(period, request_id), separators=(",", ":"),
                              ensure_ascii=False)
            batch.append((period, request_id, body, held))
            if held:
                effects.append(("request", period.source, period.provider, KIND_RENEWAL, "held"))
                held_now[(period.source, period.institution_id)] += 1
            if len(batch) >= _WRITE_BATCH:
                store.add_renewals(batch, now)
                batch = []
                self.database.interleave()
        if batch:
            store.add_renewals(batch, now)
        if expired:
            store.close_expired(expired, now)
        for (source, institution_id), n in held_now.items():
            log.warning("consent renewals held by the storm guard source=%s institution_id=%s "
                        "count=%d", source, institution_id, n)
        return effects

    # --- links ------------------------------------------------------------------------------

    def redirect_url(self, episode_id: int, created_at: float) -> str:
        token = make_token(self.secret, episode_id, created_at + self.cfg.link_ttl)
        return f"{self.cfg.public_url}/fix/{token}"

    async def link_for(self, row: OutboxRow) -> str | None:
        if self.cfg.link == "redirect":
            return self.redirect_url(row.episode_id, row.created_at)
        if self.cfg.link == "generate":
            return await self.fresh_link(row.source, row.owner_id, row.login_id)
        return None

    async def fresh_link(self, source: str, owner_id: str, login_id: str) -> str:
        src = self.sources.get(source)
        if src is None:
            raise LookupError(f"source {source!r} is not configured")
        return await src.fix_link(owner_id, login_id)

    async def episode(self, episode_id: int) -> Episode | None:
        return await self.call("episode", episode_id)

    async def release(self, source: str, institution_id: str | None) -> int:
        n = await self.call("release", source, institution_id, self.clock())
        self.worker.wake()
        self._evaluate_soon.set()
        return n
