"""Running sweeps: one APScheduler job per source, never two sweeps of a source at once.

A sweep asks the source for every account, feeds the records to a tracker session, and
reports the outcome to a :class:`SweepObserver`: the self-metrics, or :class:`SweepNotices`
(the self-metrics, then the subscribers the agent registers). Failures are logged and
counted, never raised into the scheduler; a failed sweep leaves the published snapshot
untouched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from exporter.aio import quiet_when_cancelled
from exporter.config import ScheduleConfig
from exporter.sources.base import AuthLockoutRisk, Source, SweepFailed, SweepReport
from exporter.state.file import write_failure_reason
from exporter.tracker import Tracker

log = logging.getLogger(__name__)


class SweepObserver(Protocol):
    """Receives the outcome of every sweep (implemented by ``exporter.metrics``)."""

    def source_added(self, source: str, provider: str) -> None:
        """A source is configured; called once, before its first sweep."""

    def sweep_started(self, source: str) -> None: ...

    def sweep_progress(self, source: str, ratio: float) -> None:
        """Share of customers (users) done, 0…1."""

    def sweep_cancelled(self, source: str, duration: float) -> None:
        """The sweep was cancelled (the agent is stopping)."""

    def sweep_finished(self, source: str, result: str, duration: float, *,
                       records: int | None = None, completed_at: float | None = None) -> None:
        """``result``: success, partial or failed; ``records``: accounts seen by a sweep that
        finished (not a failed one); ``completed_at``: set for a complete sweep only."""

    def state_write_failed(self, source: str, reason: str) -> None:
        """A sweep failed because the state database could not be written (``reason`` from
        :func:`exporter.state.file.write_failure_reason`)."""

    def source_stopped(self, source: str) -> None:
        """The source sweeps no more until restart (credentials refused)."""


SweepStarted = Callable[[str], None]
"""A subscriber told that a sweep of a source (the argument) began."""
SweepDone = Callable[[str, str], None]
"""A subscriber told that a sweep of a source ended: (source, result), the result being
``success`` (complete), ``partial``, ``failed`` (nothing published) or ``cancelled``."""


class SweepNotices:
    """The sweep observer of the agent: each call goes to the self-metrics, and the start
    and end of each sweep then to the subscribers given here, in order."""

    def __init__(self, metrics: SweepObserver, *, started: Sequence[SweepStarted] = (),
                 done: Sequence[SweepDone] = ()):
        self.metrics = metrics
        self.started = list(started)
        self.done = list(done)

    def source_added(self, source: str, provider: str) -> None:
        self.metrics.source_added(source, provider)

    def sweep_progress(self, source: str, ratio: float) -> None:
        self.metrics.sweep_progress(source, ratio)

    def state_write_failed(self, source: str, reason: str) -> None:
        self.metrics.state_write_failed(source, reason)

    def source_stopped(self, source: str) -> None:
        self.metrics.source_stopped(source)

    def sweep_started(self, source: str) -> None:
        self.metrics.sweep_started(source)
        for fn in self.started:
            fn(source)

    def sweep_cancelled(self, source: str, duration: float) -> None:
        self.metrics.sweep_cancelled(source, duration)
        for fn in self.done:
            fn(source, "cancelled")

    def sweep_finished(self, source: str, result: str, duration: float, *,
                       records: int | None = None, completed_at: float | None = None) -> None:
        self.metrics.sweep_finished(source, result, duration, records=records,
                                    completed_at=completed_at)
        for fn in self.done:
            fn(source, result)


class ProgressLog:
    """Logs customers done / total, rate and ETA at a steady cadence, and reports the ratio."""

    def __init__(self, source: str, observer: SweepObserver, clock: Callable[[], float],
                 every: float = 10.0):
        self.source = source
        self.observer = observer
        self.clock = clock
        self.every = every
        self.started = clock()
        self._last_log = self.started

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            self.observer.sweep_progress(self.source, done / total)
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
    """Runs the sweeps of every source against one tracker, one at a time per source.

    Each sweep runs in a task the runner owns; :meth:`stop` cancels the running ones and
    waits for them, and refuses new sweeps.
    """

    def __init__(self, sources: list[Source], tracker: Tracker, observer: SweepObserver,
                 clock: Callable[[], float] = time.time, progress_every: float = 10.0,
                 on_snapshot: Callable[[], None] | None = None):
        self.on_snapshot = on_snapshot
        self.sources = {s.name: s for s in sources}
        self.tracker = tracker
        self.observer = observer
        self.clock = clock
        self.progress_every = progress_every
        self.stopped: set[str] = set()
        self._closed = False
        self._running: dict[str, asyncio.Task[str]] = {}
        for s in sources:
            observer.source_added(s.name, s.provider)

    async def sweep(self, name: str) -> str:
        """Run one sweep of ``name`` now; returns the result label (or ``skipped``)."""
        source = self.sources[name]
        if self._closed or name in self.stopped:
            log.debug("source stopped, sweep skipped source=%s", name)
            return "skipped"
        if name in self._running:
            log.warning("previous sweep still running, skipped source=%s", name)
            return "skipped"
        task = asyncio.create_task(self._sweep(source), name=f"sweep {name}")
        self._running[name] = task
        try:
            # Cancelling the caller (the scheduler's job) cancels the sweep too.
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._closed and current is not None and not current.cancelling():
                # Stopped by stop() (shutdown), not by our caller: the job ends quietly.
                return "cancelled"
            raise
        finally:
            self._running.pop(name, None)

    async def stop(self) -> None:
        """Refuse new sweeps, cancel the running ones and wait until they have ended."""
        self._closed = True
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_source(self, source: Source, session) -> SweepReport | None:
        """The source's sweep; ``None`` when it failed (logged, never raised)."""
        name = source.name
        try:
            return await source.sweep(session)
        except AuthLockoutRisk as exc:
            self.stopped.add(name)
            self.observer.source_stopped(name)
            log.error("authentication refused, source stopped until restart source=%s: %s",
                      name, exc)
        except SweepFailed as exc:
            log.error("sweep failed source=%s: %s", name, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self._state_write_failed(name, exc):
                log.exception("sweep failed unexpectedly source=%s", name)
        return None

    def _state_write_failed(self, name: str, exc: BaseException) -> bool:
        """Count and log a sweep that could not write its state (a full disk, a read-only
        volume): an environment problem the operator fixes, so no traceback. The sweep
        recovers by itself once the database can be written again."""
        reason = write_failure_reason(exc)
        if reason is None:
            return False
        self.observer.state_write_failed(name, reason)
        log.error("sweep failed, the state database could not be written source=%s "
                  "reason=%s error=%s", name, reason, exc)
        return True

    async def _sweep(self, source: Source) -> str:
        name = source.name
        started = self.clock()
        session = await self.tracker.begin(name, source.provider)
        session.on_progress = ProgressLog(name, self.observer, self.clock, self.progress_every)
        self.observer.sweep_started(name)
        log.info("sweep started source=%s", name)
        try:
            report = await self._run_source(source, session)
        except asyncio.CancelledError:
            self.observer.sweep_cancelled(name, self.clock() - started)
            raise
        duration = self.clock() - started
        if report is not None:
            try:
                await session.finish(report)
            except Exception as exc:
                if not self._state_write_failed(name, exc):
                    raise
                report = None
        if report is None:
            # Keep the last snapshot: a failing upstream must not zero a gauge. Records
            # already applied stay in the state store and show after the next sweep.
            self.observer.sweep_finished(name, "failed", duration)
            result = "failed"
        else:
            if self.on_snapshot is not None:
                await asyncio.to_thread(self.on_snapshot)
            result = "success" if report.complete else "partial"
            self.observer.sweep_finished(
                name, result, duration, records=session.records,
                completed_at=self.clock() if report.complete else None)
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
        scheduler.add_job(quiet_when_cancelled(runner.sweep), trigger_for(schedule), args=[name], id=f"sweep:{name}",
                          name=f"sweep {name}", max_instances=1, coalesce=True,
                          misfire_grace_time=None, **kwargs)
    return scheduler
