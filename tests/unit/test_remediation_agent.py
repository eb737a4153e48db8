"""The repair loop inside the agent: built only when enabled, subscribed, started, stopped."""

from __future__ import annotations

import httpx

from exporter.agent import Agent
from exporter.config import Settings
from tests.unit.test_remediation_support import SECRET


def _settings(tmp_path, **remediation) -> Settings:
    return Settings(state={"path": str(tmp_path / "state.db")}, remediation=remediation)


def test_remediation_off_builds_nothing(tmp_path):
    agent = Agent(_settings(tmp_path), sources=[])
    assert agent.repair is None and agent.fix_server() is None
    assert not agent.tracker.subscribed


async def test_an_enabled_loop_subscribes_steady_and_runs_with_the_agent(tmp_path):
    agent = Agent(_settings(tmp_path, enabled=True, endpoint="http://127.0.0.1:9/", secret=SECRET,
                            link="redirect", public_url="http://fix.test",
                            listen_address="127.0.0.1:0"), sources=[])
    assert agent.repair is not None
    assert agent.tracker.subscribed and agent.tracker.steady
    assert agent.fix_server() is not None
    await agent.start()
    assert agent.repair._tasks
    await agent.stop()
    assert not agent.repair._tasks


async def test_with_push_on_the_webhook_listener_serves_fix_links(tmp_path):
    settings = Settings(state={"path": str(tmp_path / "state.db")},
                        webhooks={"listen_address": "127.0.0.1:0"},
                        remediation=dict(enabled=True, endpoint="http://127.0.0.1:9/",
                                         secret=SECRET, link="redirect",
                                         public_url="http://fix.test"))
    agent = Agent(settings, sources=[])
    assert agent.fix_server() is None, "no listener of its own without listen_address"
    await agent.start()
    try:
        transport = httpx.ASGITransport(app=agent.push.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hooks") as client:
            answer = await client.get("/fix/not-a-token")
        assert answer.status_code == 400 and "This link is not valid" in answer.text
    finally:
        await agent.stop()


async def test_deliveries_are_paced_from_a_sweeps_start_to_its_end_or_cancellation(tmp_path):
    agent = Agent(_settings(tmp_path, enabled=True, endpoint="http://127.0.0.1:9/", secret=SECRET,
                            sweep_deliveries_per_second=50), sources=[])
    observer = agent.runner.observer
    assert agent.repair.pace() is None
    observer.sweep_started("fin")
    assert agent.repair.pace() == 50
    observer.sweep_cancelled("fin", 1.0)
    assert agent.repair.pace() is None
    observer.sweep_started("fin")
    observer.sweep_finished("fin", "failed", 1.0)
    assert agent.repair.pace() is None
    await agent.repair.stop()
