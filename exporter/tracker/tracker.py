"""The tracker: records in, per-account state, account events and an immutable snapshot out.

For each record a session resolves the code through the catalog and applies the
:func:`~exporter.tracker.transition.transition` rule to the stored state; it writes the new
state back in batches, moves the source's :class:`FleetState` by each committed chunk, and
hands the chunk's events to the subscribers. When a sweep finishes the tracker swaps in a
new :class:`Snapshot`; the collector only ever reads the current snapshot.

All work on the state store runs on the state database's one writer thread, in order
(shared with the repair loop, the webhook inbox and the other features' writes): the event loop keeps
serving scrapes, probes and upstream responses while a chunk is applied (SQLite releases
the GIL while it works), the store's single connection is never used by two threads, and
a pushed re-read (:meth:`Tracker.apply_records`) interleaves with a running sweep chunk
by chunk.

A failed sweep changes nothing; a partial one updates only the accounts it read (the rest
keep their last state); only a complete sweep drops accounts it did not see. Records are
trusted: the sources validate them (``exporter/records.py``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar
from weakref import WeakSet

from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state.accounts import StateStore, read_contributions
from exporter.status_codes import Catalog
from exporter.tracker.aggregates import OTHER, FleetState, Snapshot
from exporter.tracker.events import AccountEvent, EventKind, Subscriber
from exporter.tracker.session import SweepContext, SweepSession
from exporter.tracker.transition import CodeFacts, removed

log = logging.getLogger(__name__)
T = TypeVar("T")

UNKNOWN = "unknown"
_OTHER_FACTS = CodeFacts(OTHER, UNKNOWN, False, False, False, False)


class TrackerEvents(Protocol):
    """Where the tracker reports codes it does not know (the agent's self-metrics)."""

    def unknown_code(self, source: str, provider: str) -> None: ...


class _Classes(dict):
    """code → (category, fixable) of one provider's stored codes, filled on first use."""

    def __init__(self, catalog: Catalog, provider: str):
        super().__init__()
        self.catalog, self.provider = catalog, provider

    def __missing__(self, code: str) -> tuple[str, bool]:
        info = self.catalog.lookup(self.provider, code)
        hit = self[code] = (info.category, info.fixable)
        return hit


class Tracker:
    """Applies sweeps and pushed re-reads to the state store, emits account events and
    publishes snapshots."""

    batch_size_default = 20_000

    def __init__(
        self,
        store: StateStore,
        *,
        catalog: Catalog | None = None,
        clock: Callable[[], float],
        otp_streak_threshold: int = 3,
        institution_min_accounts: int = 0,
        max_unknown_codes: int = 50,
        events: TrackerEvents | None = None,
        batch_size: int = batch_size_default,
    ):
        self.store = store
        self.catalog = catalog or Catalog.default()
        self.clock = clock
        self.otp_streak_threshold = otp_streak_threshold
        self.institution_min_accounts = institution_min_accounts
        self.max_unknown_codes = max_unknown_codes
        self.events = events
        self.batch_size = batch_size
        self._snapshot = Snapshot()
        self._fleets: dict[str, FleetState] = {}
        self._facts: dict[str, dict[str, CodeFacts]] = {}
        """source → code → facts of catalog codes (unknown ones are resolved per record,
        so each record carrying one is counted)"""
        self._unknown_facts: dict[str, dict[str, CodeFacts]] = defaultdict(dict)
        """source → admitted unknown code → facts (at most ``max_unknown_codes`` each)"""
        self._unknown: dict[str, set[str]] = defaultdict(set)
        """source → unknown codes that are label values (at most ``max_unknown_codes``)"""
        self._capped: set[str] = set()
        """sources that hit the cap (logged once)"""
        self._classes: dict[str, _Classes] = {}
        self._sessions: dict[str, WeakSet[SweepSession]] = defaultdict(WeakSet)
        """open sessions per source, touched on the writer thread only (a failed sweep's
        session, never finished, goes with its last reference)"""
        self._subscribers: list[tuple[Subscriber, bool]] = []
        self.subscribed = False
        """whether anyone receives events (if not, sessions do not build them)"""
        self.steady = False
        """whether a subscriber wants STILL_BROKEN events"""
        self.subscriber_errors = 0

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    # -- wiring and delivery -----------------------------------------------------------

    def subscribe(self, fn: Subscriber, *, steady: bool = False) -> None:
        """Receive each committed chunk's events (at wiring time, before sweeps run).
        ``steady`` also delivers STILL_BROKEN for fixable accounts seen again unchanged."""
        self._subscribers.append((fn, steady))
        self.subscribed = True
        self.steady = self.steady or steady

    async def deliver(self, events: Sequence[AccountEvent]) -> None:
        """Hand committed events to every subscriber, in order, on the event loop; a
        subscriber's error is logged and counted, never raised into the sweep."""
        if not events or not self._subscribers:
            return
        plain = None
        for fn, steady in self._subscribers:
            if not steady:
                if plain is None:
                    plain = [e for e in events if e.kind is not EventKind.STILL_BROKEN]
                if not plain:
                    continue
            try:
                await fn(events if steady else plain)
            except Exception:
                self.subscriber_errors += 1
                log.exception("account event subscriber failed; the sweep goes on")

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run ``fn`` on the state database's writer thread (store and fleet state are only
        touched there)."""
        return await self.store.database.write(fn, *args)

    # -- sweeps and pushed re-reads ----------------------------------------------------

    async def begin(self, source: str, provider: str, *, read_ahead: bool = True) -> SweepSession:
        return await self.run(self._begin, source, provider, read_ahead)

    def _written(self, session: SweepSession, keys: Iterable[str]) -> None:
        """On the writer thread, after ``session`` committed ``keys``: other open sessions
        of the source drop rows they read ahead for them (they are stale now)."""
        others = [s for s in self._sessions[session.source] if s is not session]
        if others:
            keys = list(keys)
            for other in others:
                other.forget(keys)

    async def apply_records(self, source: str, provider: str,
                            records: Sequence[AccountStatus]) -> None:
        """Apply a few records like a partial sweep (never drops): events, then a new
        snapshot. Safe while a sweep of the same source runs: both go through the writer
        thread chunk by chunk, and the sweep forgets rows it read ahead that this rewrote."""
        session = await self.begin(source, provider, read_ahead=False)
        await session.add(records)
        await session.finish(SweepReport(complete=False))

    def _begin(self, source: str, provider: str, read_ahead: bool) -> SweepSession:
        """A session that knows the highest account id and the accounts stored for
        ``source`` as it begins; on the writer thread."""
        if source not in self._fleets:
            self._fleets[source] = self._read_fleet(source, provider)
        session = SweepSession(self._context(source, provider), source, provider,
                               self.store.last_id(), self._fleets[source].total(),
                               read_ahead=read_ahead)
        self._sessions[source].add(session)
        return session

    def _context(self, source: str, provider: str) -> SweepContext:
        """What a session of ``source`` may use of the tracker."""
        return SweepContext(
            store=self.store, batch_size=self.batch_size, run=self.run, deliver=self.deliver,
            clock=self.clock, otp_threshold=self.otp_streak_threshold,
            emit=self.subscribed, steady=self.steady, facts=self.code_facts(source),
            resolve=lambda code: self.resolve(source, provider, code),
            classes=self.classes(provider), fleet=lambda: self.fleet(source),
            note_unknown=lambda count: self.note_unknown(source, provider, count),
            written=self._written, ended=self._sessions[source].discard,
            drop_unseen=lambda seen, upto: self._drop_unseen(source, provider, seen, upto),
            publish=lambda: self.publish_sync(source, provider))

    def fleet(self, source: str) -> FleetState:
        """The live aggregates of one source (empty until it is loaded or swept)."""
        return self._fleets.setdefault(source, FleetState())

    async def load(self, sources: dict[str, str]) -> None:
        """Rebuild the aggregates of configured sources from the state a previous run left
        (grouped in SQLite, one scan per aggregate) and publish them."""
        for name, provider in sources.items():
            await self.run(self._load, name, provider)

    def _load(self, source: str, provider: str) -> None:
        self._fleets[source] = self._read_fleet(source, provider)
        self.publish_sync(source, provider)

    def _read_fleet(self, source: str, provider: str) -> FleetState:
        fleet = FleetState()
        classes = self.classes(provider)
        fleet.merge(read_contributions(self.store.connection, source), classes.__getitem__)
        # unknown codes already stored stay label values (they count toward the cap)
        self._unknown[source].update(
            code for (_i, code, _c, _f) in fleet.accounts
            if code != OTHER and classes[code][0] == UNKNOWN)
        return fleet

    def _drop_unseen(self, source: str, provider: str, seen: bytearray,
                     upto: int) -> list[AccountEvent]:
        """On the writer thread, at the end of a complete sweep: delete the accounts it did
        not see, move the aggregates, and return their REMOVED events."""
        classes = self.classes(provider)
        dropped = self.store.drop_unseen(source, seen, upto, rows=bool(self._subscribers))
        if dropped is None:
            return []
        gone, rows = dropped
        self.fleet(source).merge(gone, classes.__getitem__, -1)
        log.info("dropped accounts no longer present upstream source=%s count=%d",
                 source, sum(n for _i, _c, n, _o in gone.accounts))
        if not rows:
            return []
        names, _transitions = self.store.labels(source)
        return removed(source, provider, rows, names, classes.__getitem__, self.clock())

    def publish_sync(self, source: str, provider: str) -> None:
        """Build one source's aggregate (a step per series, not per account) and swap it in;
        on the writer thread."""
        names, transitions = self.store.labels(source)
        agg = self.fleet(source).aggregate(source, provider, names, transitions,
                                           self.institution_min_accounts)
        old = self._snapshot
        self._snapshot = Snapshot(old.version + 1, {**old.sources, source: agg})

    async def close(self) -> None:
        """Wait for the writer's queued work, then checkpoint and close the state database
        (the agent closes the tracker last)."""
        await self.store.database.close()

    # -- codes ---------------------------------------------------------------------------

    def code_facts(self, source: str) -> dict[str, CodeFacts]:
        """The facts cache of one source (its codes as label values)."""
        return self._facts.setdefault(source, {})

    def classes(self, provider: str) -> _Classes:
        """(category, fixable) of a stored code, cached per provider."""
        hit = self._classes.get(provider)
        if hit is None:
            hit = self._classes[provider] = _Classes(self.catalog, provider)
        return hit

    def classify(self, provider: str, code: str) -> tuple[str, bool]:
        """(category, fixable) of a code as stored."""
        return self.classes(provider)[code]

    def resolve(self, source: str, provider: str, code: str) -> CodeFacts:
        """The facts of a code not cached yet. An unknown code becomes a label value only
        while the source has fewer than ``max_unknown_codes`` of them; beyond, it counts as
        ``code="other"`` (category unknown), so a misbehaving upstream cannot blow up the
        series count, and neither the cache nor the log-once memory grows with it."""
        info = self.catalog.get(provider, code)
        if info is None:
            hit = self._unknown_facts[source].get(code)
            if hit is not None:
                return hit
            admitted = self._unknown[source]
            if code not in admitted:
                if len(admitted) >= self.max_unknown_codes:
                    if source not in self._capped:
                        self._capped.add(source)
                        log.warning("more than %d distinct unknown status codes; further ones "
                                    "count as code=other source=%s provider=%s",
                                    self.max_unknown_codes, source, provider)
                    return _OTHER_FACTS
                admitted.add(code)
                log.warning("unknown status code counted as category unknown source=%s "
                            "provider=%s code=%s", source, provider, code)
            info = self.catalog.lookup(provider, code)
        otp = code == "185" if provider == "finicity" else info.category == "mfa"
        ok = info.category == "ok"
        facts = CodeFacts(code, info.category, info.fixable, otp, ok,
                          ok or info.category == "manual")
        cache = self.code_facts(source) if info.known else self._unknown_facts[source]
        cache[code] = facts
        return facts

    def note_unknown(self, source: str, provider: str, count: int) -> None:
        """Count records that carried a code unknown to the catalog."""
        if self.events is not None:
            for _ in range(count):
                self.events.unknown_code(source, provider)
