"""Refresh lag per institution: how old each institution's last successful aggregations are.

The tracker's snapshot keeps last-success ages per source only (per minute, for every account:
kept per institution too, it would multiply the aggregates' memory). Per institution, four
counts are enough to tell Plaid's refresh interval — accounts whose last success is within
``refresh_delayed_after`` (``normal``), within ``refresh_stopped_after`` (``delayed``), older
(``stopped``), or that never succeeded (``never``) — and one grouped read of the state
database gives them. :class:`InstitutionAges` makes that read on a read-only connection of its
own (WAL: it never blocks the tracker's writer) every ``every`` seconds, off the event loop,
and keeps the last good result when a read fails.

The state follows the same rule as the per-source one: the median account is ``normal`` when
at least half the accounts succeeded within ``refresh_delayed_after``, else ``delayed`` when
half did within ``refresh_stopped_after``, else ``stopped``.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from exporter.health.sides import DEFAULT_THRESHOLDS, Thresholds

log = logging.getLogger(__name__)

REFRESH_CLASSES = ("normal", "delayed", "stopped", "never")

_QUERY = """
SELECT source, institution_id,
       SUM(success_ts >= :delayed),
       SUM(success_ts < :delayed AND success_ts >= :stopped),
       SUM(success_ts < :stopped),
       SUM(success_ts IS NULL)
FROM accounts GROUP BY source, institution_id
"""


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


def read_age_counts(path: str | Path, now: float,
                    thresholds: Thresholds = DEFAULT_THRESHOLDS) -> dict[str, dict[str, AgeCounts]]:
    """source → institution_id → :class:`AgeCounts`, from the state database at ``path``."""
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    params = {"delayed": now - thresholds.refresh_delayed_after,
              "stopped": now - thresholds.refresh_stopped_after}
    out: dict[str, dict[str, AgeCounts]] = {}
    with closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
        for source, inst, normal, delayed, stopped, never in db.execute(_QUERY, params):
            out.setdefault(source, {})[inst] = AgeCounts(
                normal or 0, delayed or 0, stopped or 0, never or 0)
    return out


class InstitutionAges:
    """The last per-institution age counts, re-read every ``every`` seconds."""

    def __init__(self, state_path: str | Path, thresholds: Thresholds,
                 clock: Callable[[], float], every: float = 300.0):
        self.state_path = state_path
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
            counts = await asyncio.to_thread(read_age_counts, self.state_path, now,
                                             self.thresholds)
        except sqlite3.Error as exc:
            self.failures += 1
            log.warning("refresh lag per institution not read, the last counts stay: %s", exc)
            return False
        self._counts, self.read_at = counts, now
        self.version += 1
        return True
