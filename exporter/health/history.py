"""A day of history per (institution key, aggregator): a point every 15 minutes, kept 48 h.

A point is the health breakdown of one aggregator at one bank (its sources summed): accounts on
the health sides, the shares of ok, institution-side and aggregator-side accounts, and the
state. :func:`points_of` takes them from a health report (pure); :class:`HistoryStore` keeps
them in the state database (table ``institution_history``, one row per key, provider and
quarter hour, rows older than 48 h deleted at each write, so at most 192 rows per pair);
:class:`InstitutionHistory` writes the current quarter hour's points after each sweep and at
each quarter hour, off the event loop: a quarter hour keeps the last state seen in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from itertools import groupby
from operator import itemgetter
from typing import Any, NamedTuple

from exporter.health.report import FOLDED, HealthReport, provider_counts, rfc3339
from exporter.health.sides import HEALTH_SIDES
from exporter.state.database import StateDatabase, StateError
from exporter.state.history import HistoryTables

log = logging.getLogger(__name__)

POINT_EVERY = 900.0
"""Seconds between points (a quarter hour; points sit at the start of their quarter hour)."""
KEEP = 48 * 3600.0
"""How long points are kept."""

Pair = tuple[str, str]
"""(institution key, provider)"""


class Point(NamedTuple):
    """One quarter hour of one aggregator at one bank (a tuple: a day of a big fleet is a
    million of them)."""

    ts: float
    accounts: int
    """accounts on the health sides (ok + institution + aggregator)"""
    ok: float | None
    institution: float | None
    aggregator: float | None
    state: str

    def as_json(self) -> dict[str, Any]:
        return {"t": rfc3339(self.ts), "accounts": self.accounts, "ok": self.ok,
                "institution": self.institution, "aggregator": self.aggregator,
                "state": self.state}


def slot(ts: float) -> int:
    """The start of the quarter hour holding ``ts``."""
    return int(ts // POINT_EVERY * POINT_EVERY)


def points_of(report: HealthReport) -> dict[Pair, Point]:
    """One point per (key, provider) of ``report``, at its quarter hour; folded ones left out."""
    counts = {(inst.key, provider): sides for inst in report.institutions
              if inst.key != FOLDED for provider, sides in provider_counts(inst).items()}
    ts = slot(report.generated_at)
    out = {}
    for pair, sides in counts.items():
        n = sum(sides.values())
        shares = {s: (sides[s] / n if n else None) for s in HEALTH_SIDES}
        out[pair] = Point(ts, n, shares["ok"], shares["institution"], shares["aggregator"],
                          report.thresholds.state(sides["ok"], n))
    return out


class HistoryStore(HistoryTables):
    """Points in and out of the ``institution_history`` table
    (:class:`~exporter.state.history.HistoryTables`); blocking methods."""

    def __init__(self, database: StateDatabase):
        super().__init__(database)
        self._created = False

    def record(self, points: Mapping[Pair, Point], now: float) -> None:
        """Write ``points`` (replacing their quarter hour's) and drop those older than
        :data:`KEEP`, in one transaction (on the writer thread)."""
        rows = [(k, p, int(pt.ts), pt.accounts, pt.ok, pt.institution, pt.aggregator, pt.state)
                for (k, p), pt in points.items()]
        self.write_rows(rows, int(now - KEEP))
        self._created = True

    def read(self, since: float) -> dict[Pair, list[Point]]:
        """(key, provider) → its points from ``since`` on, oldest first (on the reader)."""
        rows = self.rows_since(int(since))
        make = Point._make
        return {pair: [make(r[2:]) for r in group]
                for pair, group in groupby(rows, itemgetter(0, 1))}

    async def ensure(self) -> None:
        """The table exists (created on the writer thread the first time), so the reader
        finds it."""
        if not self._created:
            await self.database.write(lambda: self.db)
            self._created = True


class InstitutionHistory:
    """Records the points of the current health report into a :class:`HistoryStore`."""

    def __init__(self, store: HistoryStore, report: Callable[[], HealthReport],
                 clock: Callable[[], float]):
        self.store = store
        self._report = report
        self._clock = clock
        self.failures = 0

    async def run(self) -> bool:
        """Write the current quarter hour's points (replacing what it had: a quarter hour
        keeps the last state seen in it). False when there was nothing to write, or the
        database refused (logged; written again at the next sweep or quarter hour)."""
        report = self._report()
        points = points_of(report)
        if not points:
            return False
        try:
            await self.store.database.write(self.store.record, points, report.generated_at)
        except StateError as exc:
            self.failures += 1
            log.warning("institution history point not written: %s", exc)
            return False
        return True

    async def read(self, window: float) -> dict[Pair, list[Point]]:
        """The points of the last ``window`` seconds (empty when the database refuses)."""
        try:
            await self.store.ensure()
            return await self.store.database.read(self.store.read, self._clock() - window)
        except StateError as exc:
            log.warning("institution history not read: %s", exc)
            return {}


def history_json(points: Mapping[Pair, list[Point]], key: str,
                 providers: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """``{provider: [point, …]}`` of one institution key."""
    return {p: [pt.as_json() for pt in points.get((key, p), [])] for p in sorted(set(providers))}
