"""The agent with push on: a second server on the webhook address, the listener live only
between start and stop, and the webhook metrics in the exposition from the start."""

from __future__ import annotations

import httpx

from exporter.agent import Agent
from exporter.config import Settings
from tests.unit.test_webhooks_support import SECRET, connect_event, sign


def settings(tmp_path, webhooks=True) -> Settings:
    doc = {"state": {"path": str(tmp_path / "state.db")},
           "sources": [{"name": "finicity-prod", "provider": "finicity",
                        "base_url": "http://127.0.0.1:9", "app_key": "k", "partner_id": "p",
                        "partner_secret": SECRET, "schedule": {"run_at_start": False},
                        "webhooks": {}}]}
    if webhooks:
        doc["webhooks"] = {"listen_address": "127.0.0.1:19879"}
    return Settings(**doc)


def test_push_off_means_one_server_and_no_listener(tmp_path):
    agent = Agent(settings(tmp_path, webhooks=False))
    assert agent.push is None
    assert len(agent.http_servers("127.0.0.1:19877")) == 1


async def test_push_on_serves_webhooks_between_start_and_stop(tmp_path):
    agent = Agent(settings(tmp_path))
    servers = agent.http_servers("127.0.0.1:19877")
    assert [s.config.port for s in servers] == [19877, 19879]
    hooks = httpx.AsyncClient(transport=httpx.ASGITransport(agent.push.app),
                              base_url="http://hooks")
    body = connect_event()
    headers = {"X-Finicity-Signature": sign(body)}
    assert (await hooks.post("/webhooks/finicity-prod", content=body,
                             headers=headers)).status_code == 404
    await agent.start()
    try:
        assert (await hooks.post("/webhooks/finicity-prod", content=body,
                                 headers=headers)).status_code == 200
        value = agent.metrics.value("openfinance_webhook_events_total", {
            "source": "finicity-prod", "kind": "unableToConnect", "result": "accepted"})
        assert value == 1
        assert agent.metrics.value("openfinance_webhook_events_total", {
            "source": "finicity-prod", "kind": "unknown", "result": "bad_signature"}) == 0
    finally:
        await agent.stop()
        await hooks.aclose()
