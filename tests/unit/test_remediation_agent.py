"""The repair loop inside the agent: built only when enabled, subscribed, started, stopped."""

from __future__ import annotations

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
