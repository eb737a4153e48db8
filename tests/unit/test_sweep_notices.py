"""The subscribers the agent registers for sweeps (``SweepNotices``): after the self-metrics,
each hears when a sweep starts and how it ended; institution health re-reads only after a
sweep that published its snapshot."""

from __future__ import annotations

import asyncio

from exporter.agent import Agent
from exporter.agent.sweeps import SweepNotices, SweepRunner
from exporter.config import Settings
from exporter.sources.base import SweepFailed
from tests.unit.test_sweeps import FakeSource


def _runner(harness, clock, source, heard: list[tuple[str, ...]]) -> SweepRunner:
    notices = SweepNotices(harness.metrics,
                           started=[lambda s: heard.append(("started", s))],
                           done=[lambda s, result: heard.append(("done", s, result))])
    return SweepRunner([source], harness.tracker, notices, clock)


async def test_subscribers_hear_each_sweep_with_its_result_and_the_metrics_still_count(
        harness, clock, acct):
    heard: list[tuple[str, ...]] = []
    for outcome, result in ((True, "success"), (False, "partial"),
                            (SweepFailed("down"), "failed")):
        runner = _runner(harness, clock, FakeSource([acct("a1", 0)], outcome=outcome), heard)
        assert await runner.sweep("fin") == result
    assert heard == [("started", "fin"), ("done", "fin", "success"),
                     ("started", "fin"), ("done", "fin", "partial"),
                     ("started", "fin"), ("done", "fin", "failed")]
    assert [harness.value("openfinance_sweeps_total", source="fin", result=r)
            for r in ("success", "partial", "failed")] == [1, 1, 1]


async def test_a_cancelled_sweep_is_heard_as_cancelled(harness, clock):
    heard: list[tuple[str, ...]] = []
    source = FakeSource(outcome="block")
    runner = _runner(harness, clock, source, heard)
    job = asyncio.create_task(runner.sweep("fin"))
    await source.started.wait()
    await runner.stop()
    assert job.result() == "cancelled"
    assert heard == [("started", "fin"), ("done", "fin", "cancelled")]
    assert harness.value("openfinance_sweep_duration_seconds_count", source="fin") == 1


def _published_after(agent: Agent, result: str) -> list[str]:
    """The sources whose snapshot institution health took as published after ``result``."""
    seen: list[str] = []
    agent.health.sweep_published = seen.append
    agent.runner.observer.sweep_finished("fin", result, 1.0)
    return seen


async def test_institution_health_hears_only_sweeps_that_published(tmp_path):
    agent = Agent(Settings(state={"path": str(tmp_path / "state.db")}), sources=[])
    try:
        assert _published_after(agent, "success") == ["fin"]
        assert _published_after(agent, "partial") == ["fin"]
        assert _published_after(agent, "failed") == []
        seen: list[str] = []
        agent.health.sweep_published = seen.append
        agent.runner.observer.sweep_cancelled("fin", 1.0)
        assert seen == []
    finally:
        await agent.stop()
