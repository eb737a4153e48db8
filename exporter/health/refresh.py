"""Keeps Finicity's declared institution statuses fresh for the institutions that have accounts.

Every ``institution_status_refresh`` (default 15 minutes) the agent calls
:meth:`DeclaredStatusRefresher.run` for each Finicity source: each institution with accounts
whose status is older than that is looked up again through the source's own client (same
token, rate limit and retries; the requests count in ``openfinance_upstream_requests_total``
under the institution endpoint). A failed lookup keeps the last known status and is retried
on the next run; it never clears a status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from exporter.health.directory import InstitutionDirectory, finicity_facts
from exporter.sources.institution import Institution

log = logging.getLogger(__name__)

Lookup = Callable[[str], Awaitable[Institution | None]]
"""institution_id → the institution as the source read it (None: gone)"""


class DeclaredStatusRefresher:
    def __init__(self, source: str, lookup: Lookup, directory: InstitutionDirectory,
                 institutions: Callable[[], Iterable[tuple[str, str]]], every: float,
                 clock: Callable[[], float], *, concurrency: int = 4,
                 problem: Callable[[str, str], None] = lambda source, reason: None) -> None:
        """``institutions()`` yields (institution_id, name) of the institutions with accounts
        now (the tracker snapshot's, unfolded)."""
        self.source = source
        self._lookup = lookup
        self._directory = directory
        self._institutions = institutions
        self.every = every
        self._clock = clock
        self._concurrency = concurrency
        self._problem = problem

    async def run(self) -> int:
        """Look up every due institution; returns how many statuses were read."""
        names = dict(self._institutions())
        now = self._clock()
        due = self._directory.due(self.source, sorted(names), now, self.every)
        if not due:
            return 0
        gate = asyncio.Semaphore(self._concurrency)
        results = await asyncio.gather(*(self._one(gate, i, names[i], now) for i in due))
        read = sum(results)
        log.debug("declared institution statuses read", extra={
            "source": self.source, "due": len(due), "read": read})
        return read

    async def read_now(self, institution_ids: Iterable[str]) -> int:
        """Look up these institutions at once, due or not (an institution that has just
        turned unhealthy: whether the aggregator declares it in maintenance decides between
        a page and a warning, and must not wait for the next run); returns how many read."""
        names = dict(self._institutions())
        wanted = [i for i in institution_ids if i in names]
        if not wanted:
            return 0
        gate = asyncio.Semaphore(self._concurrency)
        now = self._clock()
        read = sum(await asyncio.gather(*(self._one(gate, i, names[i], now) for i in wanted)))
        log.debug("declared statuses read for institutions turned unhealthy", extra={
            "source": self.source, "wanted": len(wanted), "read": read})
        return read

    async def _one(self, gate: asyncio.Semaphore, institution_id: str, name: str,
                   started: float) -> bool:
        """``started`` (the run's start) is the status's time, so the next run finds it due."""
        async with gate:
            try:
                institution = await self._lookup(institution_id)
            except Exception as exc:  # the source's error types vary; keep the last status
                log.warning("institution status lookup failed", extra={
                    "source": self.source, "institution_id": institution_id,
                    "error": type(exc).__name__})
                self._problem(self.source, "lookup_failed")
                return False
        self._directory.record(finicity_facts(self.source, institution_id, institution, name,
                                              started))
        return True
