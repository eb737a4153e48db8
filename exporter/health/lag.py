"""Refresh lag per institution: how old each institution's last successful aggregations are.

The tracker's snapshot keeps last-success ages per source only (per minute, for every account:
kept per institution too, it would multiply the aggregates' memory). Per institution, four
counts are enough to tell Plaid's refresh interval — accounts whose last success is within
``refresh_delayed_after`` (``normal``), within ``refresh_stopped_after`` (``delayed``), older
(``stopped``), or that never succeeded (``never``) — and one grouped read of the state
database gives them (:mod:`exporter.state.lag`). :class:`InstitutionAges` makes that read on
the state database's read-only reader (WAL: it never blocks the writer) every ``every``
seconds, off the event loop, and keeps the last good result when a read fails.

The state follows the same rule as the per-source one: the median account is ``normal`` when
at least half the accounts succeeded within ``refresh_delayed_after``, else ``delayed`` when
half did within ``refresh_stopped_after``, else ``stopped``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from exporter.health.sides import DEFAULT_THRESHOLDS, Thresholds
from exporter.state.database import StateDatabase, StateError
from exporter.state.lag import age_rows

log = logging.getLogger(__name__)

REFRESH_CLASSES = ("normal", "delayed", "stopped", "never")

@dataclass(frozen=True, slots=True)
class AgeCounts:
    """Accounts of one institution by the age of their last successful aggregation."""

    normal: int = 0
    delayed: int = 0
    stopped: int = 0
    never: int = 0

    @property
    def total(self) -> int:
        return self.normal + self.delayed + self.stopped + self.never

    def __add__(self, other: AgeCounts) -> AgeCounts:
        return AgeCounts(self.normal + other.normal, self.delayed + other.delayed,
                         self.stopped + other.stopped, self.never + other.never)

    def state(self) -> str:
        """``normal`` | ``delayed`` | ``stopped`` (the median account), ``unknown`` if empty."""
        total = self.total
        if total <= 0:
            return "unknown"
        half = total / 2
        if self.normal >= half:
            return "normal"
        if self.normal + self.delayed >= half:
            return "delayed"
        return "stopped"

    def as_dict(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in REFRESH_CLASSES}


def read_age_counts(database: StateDatabase, now: float,
                    thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, dict[str, AgeCounts]]:
    """source → institution_id → :class:`AgeCounts`, from the state database (blocking)."""
    return age_counts(database.read_sync(age_rows, database, *_bounds(now, thresholds)))


def _bounds(now: float, thresholds: Thresholds) -> tuple[float, float]:
    return now - thresholds.refresh_delayed_after, now - thresholds.refresh_stopped_after


def age_counts(rows) -> dict[str, dict[str, AgeCounts]]:
    out: dict[str, dict[str, AgeCounts]] = {}
    for source, inst, normal, delayed, stopped, never in rows:
        out.setdefault(source, {})[inst] = AgeCounts(
            normal or 0, delayed or 0, stopped or 0, never or 0)
    return out


class InstitutionAges:
    """The last per-institution age counts, re-read every ``every`` seconds."""

    def __init__(self, database: StateDatabase, thresholds: Thresholds,
                 clock: Callable[[], float], every: float = 300.0):
        self.database = database
        self.thresholds = thresholds
        self.every = every
        self._clock = clock
        self._counts: dict[str, dict[str, AgeCounts]] = {}
        self.read_at: float | None = None
        self.failures = 0
        self.version = 0
        """bumped by each successful read"""

    def counts(self, source: str) -> dict[str, AgeCounts]:
        return self._counts.get(source, {})

    async def run(self) -> bool:
        """Re-read; False (logged, counts kept) when the database cannot be read."""
        now = self._clock()
        try:
            counts = age_counts(await self.database.read(
                age_rows, self.database, *_bounds(now, self.thresholds)))
        except StateError as exc:
            self.failures += 1
            log.warning("refresh lag per institution not read, the last counts stay: %s", exc)
            return False
        self._counts, self.read_at = counts, now
        self.version += 1
        return True
