"""Push with the real agent over HTTP against the real sandbox (no sweep runs meanwhile).

A signed Connect event for one customer moves exactly that customer's series to what the
sandbox now serves, within seconds; a forged signature, a replayed ``eventId``, a 10 MB
body and wrong MX credentials change nothing and are counted; an event acknowledged just
before SIGKILL is processed after the restart, once.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter, defaultdict

import httpx
import pytest
import yaml

from exporter.config import Settings
from exporter.sandbox import credentials
from exporter.sources import build_source
from exporter.sources.base import NullObserver
from exporter.webhooks.verify import finicity_signature
from tests.integration.procs import AgentProc, Sandbox, agent_config, free_port, wait_for

pytestmark = pytest.mark.integration

FIN, MX = "finicity-sandbox", "mx-sandbox"
MX_USER, MX_PASSWORD = "mx-hooks", "mx-hooks-password-123"


class Collect:
    def __init__(self):
        self.records = []

    async def add(self, records):
        self.records.extend(records)

    def progress(self, done, total):
        pass


def owners_now(config_path) -> dict[str, Counter]:
    """What the sandbox serves now, per Finicity customer: (institution_id, code) counts,
    read with the agent's own source class (so codes are normalised the same way)."""
    settings = Settings(**yaml.safe_load(config_path.read_text()))
    cfg = next(s for s in settings.sources if s.name == FIN)

    async def run():
        source = build_source(cfg, NullObserver())
        sink = Collect()
        try:
            await source.sweep(sink)
        finally:
            await source.aclose()
        return sink.records

    out: dict[str, Counter] = defaultdict(Counter)
    for r in asyncio.run(run()):
        out[r.owner_id][(r.institution_id, r.code)] += 1
    return dict(out)


def fleet(agent: AgentProc, source: str) -> Counter:
    got: Counter = Counter()
    for labels, value in agent.scrape().get("openfinance_accounts", []):
        if labels["source"] == source and value:
            got[(labels["institution_id"], labels["code"])] += int(value)
    return +got


def sample(agent: AgentProc, name: str, **labels) -> float:
    return sum(v for lab, v in agent.scrape().get(name, [])
               if all(lab.get(k) == val for k, val in labels.items()))


def signed_post(url: str, body: bytes, secret: str = credentials.FINICITY_PARTNER_SECRET):
    return httpx.post(url, content=body, timeout=10, headers={
        "Content-Type": "application/json",
        "X-Finicity-Signature": finicity_signature(secret.encode(), body)})


def connect_event(customer: str, event_id: str, event_type: str = "done") -> bytes:
    return (f'{{"customerId":"{customer}","eventType":"{event_type}",'
            f'"eventId":"{event_id}","payload":{{}}}}').encode()


@pytest.fixture
def stack(tmp_path):
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump({"finicity": {"units": 200}, "mx": {"units": 100}}))
    sandbox = Sandbox(tmp_path, scenario, night_seconds=0)
    config = agent_config(tmp_path / "agent.yml", sandbox.url, tmp_path / "state.db",
                          interval=3600)
    hook_port = free_port()
    doc = yaml.safe_load(config.read_text())
    doc["webhooks"] = {"listen_address": f"127.0.0.1:{hook_port}"}
    for src in doc["sources"]:
        src["webhooks"] = ({} if src["provider"] == "finicity" else
                           {"webhook_username": MX_USER, "webhook_password": MX_PASSWORD})
    config.write_text(yaml.safe_dump(doc))
    agent = AgentProc(tmp_path, config)
    hooks = f"http://127.0.0.1:{hook_port}/webhooks"
    try:
        agent.wait_sweeps({FIN: 1, MX: 1})
        yield sandbox, agent, config, hooks, tmp_path
    finally:
        agent.stop()
        sandbox.stop()


def test_an_event_moves_exactly_its_customers_series_within_seconds(stack):
    sandbox, agent, config, hooks, _ = stack
    before_owners = owners_now(config)
    before = fleet(agent, FIN)
    assert before == sum(before_owners.values(), Counter())
    changed = []
    for _ in range(4):
        sandbox.advance(1)
        after_owners = owners_now(config)
        changed = [o for o in after_owners if after_owners[o] != before_owners.get(o)]
        if changed:
            break
    assert changed, "the sandbox changed no customer in four nights"
    owner = changed[0]
    sweeps = agent.sweeps(FIN)

    sent = time.monotonic()
    assert signed_post(f"{hooks}/{FIN}", connect_event(owner, "1-aaaa")).status_code == 200
    expected = before - before_owners[owner] + after_owners[owner]
    wait_for(lambda: fleet(agent, FIN) == +expected, timeout=5, interval=0.05,
             what="the customer's re-read in /metrics")
    print(f"event to /metrics: {time.monotonic() - sent:.2f}s")
    assert agent.sweeps(FIN) == sweeps  # no sweep did it
    assert sample(agent, "openfinance_webhook_events_total", source=FIN, kind="done",
                  result="accepted") == 1
    assert sample(agent, "openfinance_push_refresh_duration_seconds_count", source=FIN) == 1

    # a replay of the same eventId: answered, counted, not processed again
    assert signed_post(f"{hooks}/{FIN}", connect_event(owner, "1-aaaa")).status_code == 200
    assert sample(agent, "openfinance_webhook_events_total", source=FIN,
                  result="duplicate") == 1

    # refused deliveries change nothing
    other = next(o for o in after_owners if o != owner)
    forged = connect_event(other, "2-bbbb")
    assert signed_post(f"{hooks}/{FIN}", forged, secret="not-the-secret").status_code == 401
    try:
        big = httpx.post(f"{hooks}/{FIN}", content=b"{" + b" " * 10_000_000 + b"}",
                         timeout=30, headers={"X-Finicity-Signature": "0" * 64})
        assert big.status_code == 413
    except httpx.TransportError:
        pass  # the listener answered 413 and closed the connection while we still sent
    mx_status = (b'{"action":"CHANGED","type":"CONNECTION_STATUS","connection_status":'
                 b'"CHALLENGED","member_guid":"MBR-x","user_guid":"USR-x"}')
    wrong = httpx.post(f"{hooks}/{MX}", content=mx_status, auth=(MX_USER, "wrong"), timeout=10)
    assert wrong.status_code == 401
    assert httpx.post(f"{hooks}/nope", content=b"{}", timeout=10).status_code == 404
    wait_for(lambda: sample(agent, "openfinance_webhook_events_total",
                            result="too_large") == 1, timeout=5, what="too_large counted")
    assert sample(agent, "openfinance_webhook_events_total", source=FIN,
                  result="bad_signature") == 1
    assert sample(agent, "openfinance_webhook_events_total", source=MX,
                  result="unauthorized") == 1
    assert sample(agent, "openfinance_push_refresh_duration_seconds_count", source=FIN) == 1
    assert fleet(agent, FIN) == +expected
    assert agent.sweeps(FIN) == sweeps


def test_an_event_acknowledged_right_before_sigkill_is_processed_once_after_restart(stack):
    _sandbox, agent, config, hooks, tmp_path = stack
    owner = next(iter(owners_now(config)))
    assert signed_post(f"{hooks}/{FIN}", connect_event(owner, "3-cccc")).status_code == 200
    agent.stop(signal.SIGKILL)

    db = sqlite3.connect(tmp_path / "state.db")
    try:
        rows = db.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0]
    finally:
        db.close()
    assert rows == 1  # persisted before the answer

    restarted = AgentProc(tmp_path, config, name="agent-restarted")
    try:
        def done() -> bool:
            db = sqlite3.connect(tmp_path / "state.db")
            try:
                return db.execute("SELECT count(*) FROM webhook_inbox WHERE done_at IS NOT NULL"
                                  ).fetchone()[0] == 1
            finally:
                db.close()
        wait_for(done, timeout=10, what="the acknowledged event processed after restart")
        assert signed_post(f"{hooks}/{FIN}", connect_event(owner, "3-cccc")).status_code == 200
        assert sample(restarted, "openfinance_webhook_events_total", source=FIN,
                      result="duplicate") == 1
        db = sqlite3.connect(tmp_path / "state.db")
        try:
            assert db.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0] == 1
        finally:
            db.close()
    finally:
        assert restarted.stop() == 0, restarted.log()
