"""Institution health for one agent: the directory fed by the sources' institution lookups,
the declared-status refreshers, the collector and the routes (built by ``Agent``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.routing import Route

from exporter.aio import quiet_when_cancelled
from exporter.health.config import HealthConfig
from exporter.health.directory import InstitutionDirectory, finicity_facts, mx_facts
from exporter.health.history import HistoryStore, InstitutionHistory
from exporter.health.keys import load_key_mapping
from exporter.health.lag import AgeCounts, InstitutionAges
from exporter.health.refresh import DeclaredStatusRefresher
from exporter.health.report import (
    FOLDED,
    HealthReport,
    age_counts,
    build_report,
    declared_rows,
    declared_series,
    institution_refresh_rows,
    key_series,
    refresh_series,
)
from exporter.health.routes import Advice, health_routes
from exporter.health.sides import HEALTH_SIDES, side_of
from exporter.sources.base import Source
from exporter.sources.institution import Institution
from exporter.state.database import StateDatabase
from exporter.tracker import Snapshot

log = logging.getLogger(__name__)


class HealthWiring:
    def __init__(self, config: HealthConfig, sources: Sequence[Source],
                 snapshot: Callable[[], Snapshot], clock: Callable[[], float],
                 database: StateDatabase | None = None) -> None:
        self.directory = InstitutionDirectory(load_key_mapping(config.institution_keys_file))
        self.thresholds = config.thresholds()
        self.ages: InstitutionAges | None = None
        if database is not None and config.refresh_lag_interval > 0:
            self.ages = InstitutionAges(database, self.thresholds, clock,
                                        config.refresh_lag_interval)
        self._snapshot = snapshot
        self._clock = clock
        self.history: InstitutionHistory | None = None
        if database is not None:
            self.history = InstitutionHistory(HistoryStore(database), self.report, clock)
        self._points: set[asyncio.Task[bool]] = set()
        self.refreshers: list[DeclaredStatusRefresher] = []
        self._unhealthy: dict[str, set[str]] = {}
        """per source: the institutions degraded or down in its last published snapshot"""
        self._reads: set[asyncio.Task[int]] = set()
        self._refresh: dict[str, dict[tuple[str, str], tuple[AgeCounts, tuple[tuple, ...]]]] = {}
        """per source: the refresh rows last given, with the counts they came from"""
        for source in sources:
            source.institution_seen = self._recorder(source)
            every = getattr(getattr(source, "config", None), "institution_status_refresh", 0)
            if source.provider == "finicity" and every > 0:
                self.refreshers.append(DeclaredStatusRefresher(
                    source.name, source.institution, self.directory,
                    self._institutions(source.name), every, clock))

    def sweep_done(self, source: str, result: str) -> None:
        """The sweep subscriber (``exporter.agent.sweeps.SweepDone``): a sweep that did not
        fail or get cancelled has published its snapshot."""
        if result in ("success", "partial"):
            self.sweep_published(source)

    def sweep_published(self, source: str) -> asyncio.Task[int] | None:
        """A sweep of ``source`` published its snapshot: the institutions of a Finicity
        source that have just turned degraded or down have their declared status re-read now
        rather than at the next run, so that a declared maintenance holds the outage page
        back from the first evaluation (one lookup per institution and change of state);
        this quarter hour's history points are written as of this sweep. Returns the task
        reading the declared statuses, if any."""
        if self.history is not None:  # this quarter hour's points, as of this sweep
            point = asyncio.get_running_loop().create_task(
                self.history.run(), name="institution-history-point")
            self._points.add(point)
            point.add_done_callback(self._points.discard)
        refresher = next((r for r in self.refreshers if r.source == source), None)
        agg = self._snapshot().sources.get(source)
        if refresher is None or agg is None:
            return None
        per_inst: dict[str, dict[str, int]] = {}
        for inst_id, _name, _code, category, n in agg.accounts:
            if inst_id != FOLDED:
                sides = per_inst.setdefault(inst_id, dict.fromkeys(HEALTH_SIDES, 0))
                side = side_of(category)
                if side in sides:
                    sides[side] += n
        unhealthy = {i for i, sides in per_inst.items()
                     if self.thresholds.state(sides["ok"], sum(sides.values()))
                     in ("degraded", "down")}
        turned = unhealthy - self._unhealthy.get(source, set())
        self._unhealthy[source] = unhealthy
        if not turned:
            return None
        task = asyncio.get_running_loop().create_task(
            refresher.read_now(sorted(turned)), name=f"institution-status-now:{source}")
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)
        return task

    async def close(self) -> None:
        """Cancel the immediate re-reads still running (the scheduler's runs stop with it)."""
        for task in list(self._reads):
            task.cancel()
        await asyncio.gather(*self._reads, *self._points, return_exceptions=True)

    def _recorder(self, source: Source) -> Callable[[str, str, Institution], None]:
        def record(institution_id: str, name: str, institution: Institution) -> None:
            if source.provider == "finicity":
                facts = finicity_facts(source.name, institution_id, institution, name,
                                       self._clock())
            else:
                facts = mx_facts(source.name, institution_id, institution, name)
            self.directory.record(facts)
        return record

    def _institutions(self, source: str) -> Callable[[], list[tuple[str, str]]]:
        """(institution_id, name) of the institutions with accounts in the current snapshot."""
        def institutions() -> list[tuple[str, str]]:
            agg = self._snapshot().sources.get(source)
            if agg is None:
                return []
            return sorted({(a[0], a[1]) for a in agg.accounts if a[0] != FOLDED})
        return institutions

    def _ages(self, source: str):
        return self.ages.counts(source) if self.ages is not None else {}

    def rows(self) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], list[tuple]]:
        """The rows of openfinance_institution_declared_status, _key_info and
        _refresh_accounts (the collector's)."""
        snap = self._snapshot()
        return (list(declared_series(snap, self.directory)),
                list(key_series(snap, self.directory)), list(refresh_series(snap, self._ages)))

    def rows_version(self) -> tuple[int, int]:
        """(changes whenever a declared-status or key row may have changed, ... a refresh
        row), the snapshot aside."""
        return self.directory.version, self.ages.version if self.ages is not None else 0

    def institution_rows(self, source: str, provider: str, institution_id: str, name: str
                         ) -> tuple[tuple[tuple[str, ...], ...], tuple[tuple[str, ...], ...]]:
        """One institution's rows of openfinance_institution_declared_status and _key_info
        (none for the folded entry)."""
        if institution_id == FOLDED:
            return (), ()
        return (declared_rows(source, provider, institution_id, name,
                              self.directory.declared(source, institution_id)),
                ((source, provider, institution_id,
                  self.directory.key(provider, institution_id, name)),))

    def refresh_rows(self, source: str, provider: str, shown: Iterable[tuple[str, str]],
                     ) -> dict[tuple[str, str], tuple[tuple, ...]]:
        """(institution_id, name) → rows of openfinance_institution_refresh_accounts, for
        the (institution_id, name) pairs the snapshot shows (none before the first read)."""
        read = self._ages(source)
        if not read:
            self._refresh.pop(source, None)
            return {}
        before = self._refresh.get(source, {})
        now: dict[tuple[str, str], tuple[AgeCounts, tuple[tuple, ...]]] = {}
        for key, counts in age_counts(shown, read).items():
            hit = before.get(key)  # the same counts keep the same rows (compared as one)
            now[key] = hit if hit is not None and hit[0] == counts else (
                counts, institution_refresh_rows(source, provider, *key, counts))
        self._refresh[source] = now
        return {key: rows for key, (_counts, rows) in now.items()}

    def report(self) -> HealthReport:
        return build_report(self._snapshot(), self.directory, self._clock(), self.thresholds,
                            self._ages)

    def routes(self, advice: Advice | None = None) -> list[Route]:
        return health_routes(self.report, advice,
                             None if self.history is None else self.history.read)

    def schedule(self, scheduler: Any) -> None:
        """One interval job per Finicity source: re-read due declared statuses; one job
        re-reading the refresh lag per institution (first soon after the first sweep); one
        recording the history point at each quarter hour."""
        if self.ages is not None:
            first = min(self.ages.every, 60.0)
            scheduler.add_job(
                quiet_when_cancelled(self.ages.run), "interval", seconds=self.ages.every, id="institution-refresh-lag",
                name="institution refresh lag", max_instances=1, coalesce=True,
                next_run_time=datetime.now(UTC) + timedelta(seconds=first))
        if self.history is not None:
            scheduler.add_job(
                self.history.run, "cron", minute="*/15", second=5, id="institution-history",
                name="institution history", max_instances=1, coalesce=True)
        for r in self.refreshers:
            scheduler.add_job(
                quiet_when_cancelled(r.run), "interval", seconds=r.every, id=f"institution-status:{r.source}",
                name=f"institution status {r.source}", max_instances=1, coalesce=True,
                next_run_time=datetime.now(UTC) + timedelta(seconds=r.every))
