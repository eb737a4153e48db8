"""Running sweeps: one APScheduler job per source, never two sweeps of a source at once.

A sweep asks the source for every account, feeds the records to a tracker session, and
records the outcome in the self-metrics. Failures are logged and counted, never raised into
the scheduler; a failed sweep leaves the published snapshot untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from exporter.config import ScheduleConfig
from exporter.metrics import AgentMetrics
from exporter.sources.base import AuthLockoutRisk, Source, SweepFailed
from exporter.tracker import Tracker

log = logging.getLogger(__name__)


class ProgressLog:
    """Logs customers done / total, rate and ETA at a steady cadence, and sets the ratio gauge."""

    def __init__(self, source: str, metrics: AgentMetrics, clock: Callable[[], float],
                 every: float = 10.0):
        self.source = source
        self.metrics = metrics
        self.clock = clock
        self.every = every
        self.started = clock()
        self._last_log = self.started

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            self.metrics.sweep_progress.labels(self.source).set(min(done / total, 1.0))
        now = self.clock()
        if now - self._last_log < self.every:
            return
        self._last_log = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        if total and rate > 0:
            eta = f"{(total - done) / rate:.0f}s"
            log.info("sweep progress source=%s done=%d total=%d rate=%.1f/s eta=%s",
                     self.source, done, total, rate, eta)
        else:
            log.info("sweep progress source=%s done=%d rate=%.1f/s", self.source, done, rate)


class SweepRunner:
    """Runs the sweeps of every source against one tracker."""

    def __init__(self, sources: list[Source], tracker: Tracker, metrics: AgentMetrics,
                 clock: Callable[[], float] = time.time, progress_every: float = 10.0,
                 on_snapshot: Callable[[], None] | None = None):
        self.on_snapshot = on_snapshot
        self.sources = {s.name: s for s in sources}
        self.tracker = tracker
        self.metrics = metrics
        self.clock = clock
        self.progress_every = progress_every
        self.stopped: set[str] = set()
        self._locks = {s.name: asyncio.Lock() for s in sources}
        for s in sources:
            metrics.init_source(s.name, s.provider)

    async def sweep(self, name: str) -> str:
        """Run one sweep of ``name`` now; returns the result label (or ``skipped``)."""
        source = self.sources[name]
        if name in self.stopped:
            log.debug("source stopped, sweep skipped source=%s", name)
            return "skipped"
        lock = self._locks[name]
        if lock.locked():
            log.warning("previous sweep still running, skipped source=%s", name)
            return "skipped"
        async with lock:
            return await self._sweep(source)

    async def _sweep(self, source: Source) -> str:
        name, m = source.name, self.metrics
        started = self.clock()
        session = await self.tracker.begin(name, source.provider)
        session.on_progress = ProgressLog(name, m, self.clock, self.progress_every)
        m.sweep_progress.labels(name).set(0)
        log.info("sweep started source=%s", name)
        try:
            report = await source.sweep(session)
        except AuthLockoutRisk as exc:
            self.stopped.add(name)
            m.source_up.labels(name).set(0)
            log.error("authentication refused, source stopped until restart source=%s: %s",
                      name, exc)
            report = None
        except SweepFailed as exc:
            log.error("sweep failed source=%s: %s", name, exc)
            report = None
        except asyncio.CancelledError:
            m.sweep_progress.labels(name).set(1)
            raise
        except Exception:
            log.exception("sweep failed unexpectedly source=%s", name)
            report = None
        finally:
            m.sweep_duration.labels(name).observe(self.clock() - started)
        if report is None:
            # Keep the last snapshot: a failing upstream must not zero a gauge. Records
            # already applied stay in the state store and show after the next sweep.
            result = "failed"
        else:
            await session.finish(report)
            if self.on_snapshot is not None:
                await asyncio.to_thread(self.on_snapshot)
            result = "success" if report.complete else "partial"
            m.sweep_accounts.labels(name).set(session.records)
            if report.complete:
                m.sweep_last_success.labels(name).set(self.clock())
        agg = self.tracker.snapshot.sources.get(name)
        if agg is not None:
            m.state_accounts.labels(name).set(agg.state_accounts)
        m.sweeps.labels(name, result).inc()
        m.sweep_progress.labels(name).set(1)
        log.info("sweep finished source=%s result=%s records=%d duration=%.1fs",
                 name, result, session.records, self.clock() - started)
        return result


def trigger_for(schedule: ScheduleConfig):
    if schedule.cron:
        return CronTrigger.from_crontab(schedule.cron, timezone=schedule.timezone)
    return IntervalTrigger(seconds=schedule.interval, jitter=schedule.jitter or None,
                           timezone=schedule.timezone)


def build_scheduler(runner: SweepRunner, schedules: dict[str, ScheduleConfig]) -> AsyncIOScheduler:
    """One job per source: coalesced, one instance at a time, first run at start if asked."""
    scheduler = AsyncIOScheduler(timezone="UTC")
    for name, schedule in schedules.items():
        kwargs = {}
        if schedule.run_at_start:
            from datetime import UTC, datetime

            kwargs["next_run_time"] = datetime.now(UTC)
        scheduler.add_job(runner.sweep, trigger_for(schedule), args=[name], id=f"sweep:{name}",
                          name=f"sweep {name}", max_instances=1, coalesce=True,
                          misfire_grace_time=None, **kwargs)
    return scheduler
