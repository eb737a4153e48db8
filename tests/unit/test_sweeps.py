"""The sweep runner: outcomes reach the self-metrics through the sweep observer only, the
runner owns its sweep tasks and cancels them on stop; ``python -m exporter``."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys

from exporter.agent import Agent
from exporter.agent.sweeps import SweepRunner
from exporter.config import Settings, StateConfig
from exporter.metrics.catalog import METRICS
from exporter.sources.base import AuthLockoutRisk, Source, SweepFailed, SweepReport


class FakeSource(Source):
    """Delivers ``records`` then ends as told: complete, partial, raise, or block until
    cancelled."""

    def __init__(self, records=(), *, outcome: object = True, name: str = "fin"):
        self.name, self.provider = name, "finicity"
        self.records = list(records)
        self.outcome = outcome
        self.started = asyncio.Event()
        self.cancelled = False
        self.closed = False

    async def sweep(self, sink) -> SweepReport:
        await sink.add(self.records)
        sink.progress(1, 2)
        self.started.set()
        if self.outcome == "block":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return SweepReport(complete=bool(self.outcome), records=len(self.records))

    async def aclose(self) -> None:
        self.closed = True

    async def refresh_owner(self, owner_id: str) -> list:
        return []

    def owns(self, owner_id: str) -> bool:
        return True

    async def fix_link(self, owner_id: str, login_id: str) -> str:
        raise NotImplementedError


def _runner(harness, clock, source: FakeSource) -> SweepRunner:
    return SweepRunner([source], harness.tracker, harness.metrics, clock)


def _sweeps(harness, result: str) -> float | None:
    return harness.value("openfinance_sweeps_total", source="fin", result=result)


async def test_a_new_source_has_its_series_at_zero_before_the_first_sweep(harness, clock):
    _runner(harness, clock, FakeSource())
    assert {_sweeps(harness, r) for r in ("success", "partial", "failed")} == {0.0}
    assert harness.value("openfinance_source_up", source="fin") == 1
    assert harness.value("openfinance_sweep_progress_ratio", source="fin") == 1
    assert harness.value("openfinance_upstream_retries_total", source="fin",
                         reason="rate_limited") == 0


async def test_a_complete_sweep_reports_result_size_time_and_state(harness, clock, acct):
    runner = _runner(harness, clock, FakeSource([acct("a1", 0), acct("a2", 185)]))
    assert await runner.sweep("fin") == "success"
    assert _sweeps(harness, "success") == 1 and _sweeps(harness, "failed") == 0
    assert harness.value("openfinance_sweep_accounts", source="fin") == 2
    assert harness.value("openfinance_sweep_last_success_timestamp_seconds",
                         source="fin") == clock.now
    assert harness.value("openfinance_sweep_progress_ratio", source="fin") == 1
    assert harness.value("openfinance_sweep_duration_seconds_count", source="fin") == 1
    # state_accounts is read from the published snapshot, not pushed by the runner
    assert harness.value("openfinance_state_accounts", source="fin") == 2
    assert b'openfinance_state_accounts{source="fin"} 2.0' in harness.exposition.render()[0]


async def test_a_partial_sweep_is_no_success(harness, clock, acct):
    runner = _runner(harness, clock, FakeSource([acct("a1", 0)], outcome=False))
    assert await runner.sweep("fin") == "partial"
    assert _sweeps(harness, "partial") == 1
    assert harness.value("openfinance_sweep_accounts", source="fin") == 1
    assert harness.value("openfinance_sweep_last_success_timestamp_seconds",
                         source="fin") is None


async def test_a_failed_sweep_keeps_the_snapshot_and_counts_once(harness, clock, acct):
    await harness.sweep([acct("a1", 0)])
    version = harness.tracker.snapshot.version
    runner = _runner(harness, clock, FakeSource([acct("a2", 0)], outcome=SweepFailed("down")))
    assert await runner.sweep("fin") == "failed"
    assert _sweeps(harness, "failed") == 1 and _sweeps(harness, "success") == 0
    assert harness.tracker.snapshot.version == version
    assert harness.value("openfinance_state_accounts", source="fin") == 1
    assert harness.value("openfinance_sweep_accounts", source="fin") is None
    assert harness.value("openfinance_sweep_progress_ratio", source="fin") == 1


async def test_an_unexpected_error_is_a_failed_sweep_not_a_crash(harness, clock):
    runner = _runner(harness, clock, FakeSource(outcome=ValueError("bug")))
    assert await runner.sweep("fin") == "failed"
    assert _sweeps(harness, "failed") == 1


def _disk_full() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorname = "SQLITE_FULL"
    return exc


async def test_a_state_that_cannot_be_written_fails_the_sweep_with_a_reason(harness, clock, acct,
                                                                           caplog):
    await harness.sweep([acct("a1", 0)])
    version = harness.tracker.snapshot.version
    # As a source's task group raises it when the tracker's write fails inside a worker.
    source = FakeSource([acct("a2", 0)], outcome=ExceptionGroup("unit", [_disk_full()]))
    runner = _runner(harness, clock, source)
    assert harness.value("openfinance_state_write_failures_total", source="fin",
                         reason="disk_full") == 0
    assert await runner.sweep("fin") == "failed"
    assert harness.value("openfinance_state_write_failures_total", source="fin",
                         reason="disk_full") == 1
    assert _sweeps(harness, "failed") == 1
    assert harness.tracker.snapshot.version == version, "the last gauges stay"
    assert not [r for r in caplog.records if r.exc_info], "an environment problem: no traceback"
    # The disk has room again: the next sweep succeeds.
    source.outcome = True
    assert await runner.sweep("fin") == "success"


async def test_a_state_write_failing_at_the_end_of_a_sweep_is_counted_too(harness, clock, acct,
                                                                         monkeypatch):
    runner = _runner(harness, clock, FakeSource([acct("a1", 0)]))
    real_begin = harness.tracker.begin

    async def begin(*args, **kwargs):
        session = await real_begin(*args, **kwargs)

        async def finish(report):
            raise _disk_full()
        session.finish = finish
        return session
    monkeypatch.setattr(harness.tracker, "begin", begin)
    assert await runner.sweep("fin") == "failed"
    assert harness.value("openfinance_state_write_failures_total", source="fin",
                         reason="disk_full") == 1


async def test_refused_credentials_stop_the_source_until_restart(harness, clock):
    runner = _runner(harness, clock, FakeSource(outcome=AuthLockoutRisk("401")))
    assert await runner.sweep("fin") == "failed"
    assert harness.value("openfinance_source_up", source="fin") == 0
    assert await runner.sweep("fin") == "skipped"
    assert _sweeps(harness, "failed") == 1


async def test_a_second_sweep_of_a_running_source_is_skipped(harness, clock):
    source = FakeSource(outcome="block")
    runner = _runner(harness, clock, source)
    first = asyncio.create_task(runner.sweep("fin"))
    await source.started.wait()
    assert harness.value("openfinance_sweep_progress_ratio", source="fin") == 0.5
    assert await runner.sweep("fin") == "skipped"
    await runner.stop()
    assert first.result() == "cancelled"


async def test_stop_cancels_running_sweeps_and_refuses_new_ones(harness, clock):
    source = FakeSource(outcome="block")
    runner = _runner(harness, clock, source)
    job = asyncio.create_task(runner.sweep("fin"))  # as the scheduler runs it
    await source.started.wait()
    await runner.stop()
    # The job ends quietly (no "job raised" traceback from the scheduler at shutdown).
    assert source.cancelled and job.done() and job.result() == "cancelled"
    assert {_sweeps(harness, r) for r in ("success", "partial", "failed")} == {0.0}
    assert harness.value("openfinance_sweep_progress_ratio", source="fin") == 1
    assert harness.value("openfinance_sweep_duration_seconds_count", source="fin") == 1
    assert await runner.sweep("fin") == "skipped"


async def test_cancelling_the_caller_cancels_the_sweep_and_propagates(harness, clock):
    source = FakeSource(outcome="block")
    runner = _runner(harness, clock, source)
    job = asyncio.create_task(runner.sweep("fin"))
    await source.started.wait()
    job.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await job
    assert job.cancelled() and source.cancelled


async def test_agent_stop_cancels_a_running_sweep_and_closes_everything(tmp_path, clock):
    source = FakeSource(outcome="block")
    agent = Agent(Settings(state=StateConfig(path=tmp_path / "state.db")), clock=clock,
                  sources=[source])
    await agent.start()
    job = asyncio.create_task(agent.runner.sweep("fin"))
    await source.started.wait()
    await agent.stop()
    assert source.cancelled and job.result() == "cancelled" and source.closed
    assert not agent.ready


def test_every_instrumented_metric_has_one_instrument(harness):
    for spec in METRICS:
        if not spec.from_snapshot:
            assert harness.metrics.instrument(spec.short)._name == spec.name.removesuffix(
                "_total")


def _python_m(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True,
                          text=True, timeout=60)


def test_python_m_exporter_is_the_command_line():
    version = _python_m("--version")
    assert version.returncode == 0 and version.stdout.startswith("openfinance-exporter ")
    codes = _python_m("codes", "--provider", "mx")
    assert codes.returncode == 0 and "CHALLENGED" in codes.stdout
    assert _python_m().returncode != 0  # no command: help and the config exit code
