"""The routing advice of every institution, kept between evaluations (in memory).

:class:`Advisor` steps each (institution key, aggregator) track with every health report it
is given (:mod:`.advice` holds the rule) and keeps the latest advice for the API, the status
page and ``openfinance_routing_share``. After each scheduled evaluation the institutions
whose advice changed are saved to the state database (:mod:`.store`); at start the agent
restores them, so a restart keeps holds and pending changes. Without a saved advice (a new
state file, an unreadable row) it is re-derived from the fleet: each aggregator's first state
applies at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from exporter.health.report import (
    FOLDED,
    HealthReport,
    InstitutionHealth,
    provider_counts,
    rfc3339,
)
from exporter.health.sides import Thresholds
from exporter.routing.advice import (
    Observed,
    Track,
    advise,
    observe,
    reason,
    split,
)
from exporter.routing.config import RoutingConfig, load_institution_ids
from exporter.routing.store import Kept, RoutingStore
from exporter.sources.institution import INSTITUTION, OVERALL
from exporter.state.database import StateError

log = logging.getLogger(__name__)

DECLARED_PRODUCTS = (INSTITUTION, OVERALL, "transAgg")
"""The declared statuses that speak for aggregation (the institution, overall, transactions)."""
AWAY, BACK = "away", "back"


class RoutingObserver(Protocol):
    def routing_providers(self, providers: tuple[str, ...]) -> None:
        """The providers advised on (their change counters start at 0)."""

    def routing_changed(self, provider: str, direction: str) -> None: ...


@dataclass(frozen=True, slots=True)
class InstitutionAdvice:
    key: str
    name: str
    shares: dict[str, int]
    rule: str
    reason: str
    since: float
    """when the shares last changed (or were first given)"""
    tracks: dict[str, Track]
    refs: tuple[tuple[str, str], ...]
    """(provider, institution_id) of the institution at each of its sources"""

    def as_json(self, hold: float, recover_hold: float) -> dict[str, Any]:
        providers = {}
        for p, t in sorted(self.tracks.items()):
            due = t.due(hold, recover_hold)
            providers[p] = {
                "state": t.state, "declared": t.declared,
                "since": None if t.since is None else rfc3339(t.since),
                "seen_since": None if t.seen_since is None else rfc3339(t.seen_since),
                "pending": None if t.pending is None else {
                    "state": t.pending, "declared": t.pending_declared,
                    "since": rfc3339(t.pending_since or 0),
                    "applies_at": None if due is None else rfc3339(due)}}
        return {"key": self.key, "name": self.name, "advice": dict(self.shares),
                "reason": self.reason, "since": rfc3339(self.since), "rule": self.rule,
                "providers": providers}


def observations(inst: InstitutionHealth, thresholds: Thresholds) -> dict[str, Observed]:
    """Per provider: the observed state, from the accounts of all its sources together."""
    declared: dict[str, list[str | None]] = {}
    for p in inst.providers:
        if p.declared is not None:
            declared.setdefault(p.provider, []).extend(
                p.declared.get(product) for product in DECLARED_PRODUCTS)
    return {provider: observe(sides["ok"], sum(sides.values()), declared.get(provider, ()),
                              thresholds)
            for provider, sides in provider_counts(inst).items()}


class Advisor:
    """Per institution key: the advice, updated from each health report given to
    :meth:`update` (thread-safe; callers: the evaluation job, the routes)."""

    def __init__(self, config: RoutingConfig, providers: Iterable[str],
                 observer: RoutingObserver | None = None) -> None:
        self.weights = config.weights(providers)
        self.defaults = split(self.weights, self.weights)
        self.hold = config.hold
        self.recover_hold = config.recover_hold
        self.ids = load_institution_ids(config.institution_ids_file)
        self._observer = observer
        self._advice: dict[str, InstitutionAdvice] = {}
        self._restored: dict[str, Kept] = {}
        self._dirty: set[str] = set()
        self._gone: set[str] = set()
        self._generated_at: float | None = None
        self._lock = threading.Lock()
        self.version = 0
        """moves whenever a row of ``openfinance_routing_share`` may have changed"""
        if observer is not None:
            observer.routing_providers(tuple(self.weights))

    def update(self, report: HealthReport) -> list[InstitutionAdvice]:
        """Step every institution of ``report`` (at its ``generated_at``); institutions no
        longer in it are forgotten. Returns the advice, institutions off the defaults first."""
        now = report.generated_at
        with self._lock:
            if self._generated_at is not None and now < self._generated_at:
                return self._sorted()  # an older report evaluated late changes nothing
            current: dict[str, InstitutionAdvice] = {}
            for inst in report.institutions:
                if inst.key == FOLDED:
                    continue
                before = self._advice.get(inst.key) or self._restored.pop(inst.key, None)
                advice = advise(before.tracks if before else {},
                                observations(inst, report.thresholds), now, self.weights,
                                self.hold, self.recover_hold)
                since = now
                if before is not None and before.shares == advice.shares:
                    since = before.since
                elif before is not None:
                    self._count(before.shares, advice.shares)
                current[inst.key] = InstitutionAdvice(
                    inst.key, inst.name, advice.shares, advice.rule,
                    reason(advice, self.hold, self.recover_hold), since, advice.tracks,
                    tuple(sorted({(p.provider, p.institution_id) for p in inst.providers})))
                if before is None or (before.tracks, before.shares, before.since) != (
                        advice.tracks, advice.shares, since):
                    self._dirty.add(inst.key)
                if (before is None or before.shares != advice.shares
                        or getattr(before, "name", None) != inst.name):  # (restored: no name)
                    self.version += 1
            gone = set(self._advice) - set(current)
            if gone:
                self.version += 1
            self._gone |= gone
            self._dirty -= gone
            self._advice = current
            self._generated_at = now
            return self._sorted()

    def restore(self, kept: Mapping[str, Kept]) -> None:
        """Tracks, shares and since of a previous run (:class:`RoutingStore`), taken up by
        each institution at its next evaluation."""
        with self._lock:
            self._restored = {k: v for k, v in kept.items() if k not in self._advice}

    def changes(self) -> tuple[dict[str, Kept], set[str]]:
        """The institutions whose advice changed since the last call, and those gone."""
        with self._lock:
            upserts = {k: Kept(a.tracks, a.shares, a.since) for k in self._dirty
                       if (a := self._advice.get(k)) is not None}
            gone, self._dirty, self._gone = self._gone, set(), set()
            return upserts, gone

    def unsaved(self, upserts: Iterable[str], gone: Iterable[str]) -> None:
        """A save failed: those keys are written with the next one."""
        with self._lock:
            self._dirty |= {k for k in upserts if k in self._advice}
            self._gone |= {k for k in gone if k not in self._advice}

    async def save(self, store: RoutingStore) -> bool:
        upserts, gone = self.changes()
        if not upserts and not gone:
            return True
        try:
            await store.database.write(store.save, upserts, gone)
        except StateError as exc:
            self.unsaved(upserts, gone)
            log.warning("routing advice not saved, retried at the next evaluation: %s", exc)
            return False
        return True

    async def load(self, store: RoutingStore) -> int:
        """Restore the advice of the previous run; the institutions restored."""
        try:
            kept, bad = await store.database.write(store.load)
        except StateError as exc:
            log.warning("routing advice not read, re-derived from the fleet: %s", exc)
            return 0
        if bad:
            log.warning("routing advice: %d stored institutions could not be read, re-derived",
                        bad)
        self.restore(kept)
        return len(kept)

    def _count(self, before: dict[str, int], after: dict[str, int]) -> None:
        """``away``: a provider's share fell below its default share; ``back``: it rose from
        below it."""
        if self._observer is None:
            return
        for provider, default in self.defaults.items():
            old, new = before.get(provider, 0), after.get(provider, 0)
            if new < old and new < default:
                self._observer.routing_changed(provider, AWAY)
            elif new > old and old < default:
                self._observer.routing_changed(provider, BACK)

    def _sorted(self) -> list[InstitutionAdvice]:
        return sorted(self._advice.values(),
                      key=lambda a: (a.shares == self.defaults, a.key))

    def current(self) -> list[InstitutionAdvice]:
        """The advice of the last update, without evaluating."""
        with self._lock:
            return self._sorted()

    def by_key(self) -> dict[str, InstitutionAdvice]:
        with self._lock:
            return dict(self._advice)

    def rows(self) -> list[tuple[str, str, str, int]]:
        """(key, institution, provider, share): the rows of ``openfinance_routing_share``, in
        key order."""
        return [row for block in self.rows_by_key().values() for row in block]

    def rows_by_key(self) -> dict[str, tuple[tuple[str, str, str, int], ...]]:
        """The rows of each institution key, keys in order (/metrics keeps them per key and
        re-renders a key's block only when :attr:`version` moved and its rows changed)."""
        with self._lock:
            advice = sorted(self._advice.values(), key=lambda a: a.key)
        return {a.key: tuple((a.key, a.name, p, share) for p, share in a.shares.items())
                for a in advice}

    def as_json(self, advice: list[InstitutionAdvice], now: float) -> dict[str, Any]:
        return {"generated_at": rfc3339(now), "hold_seconds": self.hold,
                "recover_hold_seconds": self.recover_hold, "default": dict(self.defaults),
                "institutions": [a.as_json(self.hold, self.recover_hold) for a in advice]}

    def ucp(self, advice: list[InstitutionAdvice]) -> dict[str, Any]:
        """The Universal Connect Project's preferences: ``institutionAggregatorVolumeMap``
        keyed by our institution key or, with ``routing.institution_ids_file``, by the
        partner's ids (institutions the file does not name are left out; two keys mapped to
        one id: the first key in sort order wins)."""
        volume: dict[str, dict[str, int]] = {}
        for a in sorted(advice, key=lambda a: a.key):
            ident = a.key if self.ids is None else self.ids.partner_id(a.key, a.refs)
            if ident is not None and ident not in volume:
                volume[ident] = dict(a.shares)
        return {"institutionAggregatorVolumeMap": volume,
                "defaultAggregatorVolume": dict(self.defaults)}

    @property
    def evaluate_every(self) -> float:
        """Seconds between evaluations by the scheduler: a quarter of the shorter hold,
        between 1 s and 60 s (a change moves the advice at most this long after its hold)."""
        return max(1.0, min(60.0, self.hold / 4, self.recover_hold / 4))

    def schedule(self, scheduler: Any, report: Callable[[], HealthReport],
                 store: RoutingStore | None = None) -> None:
        """Evaluate every :attr:`evaluate_every` seconds, so holds elapse and the metrics
        move even when nobody asks the API; then save what changed to ``store``."""
        async def evaluate() -> None:
            self.update(report())
            if store is not None:
                await self.save(store)

        scheduler.add_job(evaluate, "interval", seconds=self.evaluate_every, id="routing-advice",
                          name="routing advice", max_instances=1, coalesce=True,
                          next_run_time=datetime.now(UTC) + timedelta(seconds=1))
