"""Push with the real agent over HTTP against the real sandbox (no sweep runs meanwhile).

A signed Connect event for one customer moves exactly that customer's series to what the
sandbox now serves, within seconds; a forged signature, a replayed ``eventId``, a 10 MB
body and wrong MX credentials change nothing and are counted; an event acknowledged just
before SIGKILL is processed after the restart, once.
"""

from __future__ import annotations

import signal
import sqlite3
import time
from collections import Counter

import httpx
import pytest

from tests.integration.procs import AgentProc, free_port, served_owners, wait_for
from tests.integration.push_support import (
    FIN,
    MX,
    MX_USER,
    connect_event,
    push_stack,
    signed_post,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path):
    hook_port = free_port()
    with push_stack(tmp_path, {"finicity": {"units": 200}, "mx": {"units": 100}},
                    hook_port) as (sandbox, agent, config):
        yield sandbox, agent, config, f"http://127.0.0.1:{hook_port}/webhooks", tmp_path


def test_an_event_moves_exactly_its_customers_series_within_seconds(stack):
    sandbox, agent, config, hooks, _ = stack
    before_owners = served_owners(config, FIN)
    before = agent.accounts(FIN)
    assert before == sum(before_owners.values(), Counter())
    changed = []
    for _ in range(4):
        sandbox.advance(1)
        after_owners = served_owners(config, FIN)
        changed = [o for o in after_owners if after_owners[o] != before_owners.get(o)]
        if changed:
            break
    assert changed, "the sandbox changed no customer in four nights"
    owner = changed[0]
    sweeps = agent.sweeps(FIN)

    sent = time.monotonic()
    assert signed_post(f"{hooks}/{FIN}", connect_event(owner, "1-aaaa")).status_code == 200
    expected = before - before_owners[owner] + after_owners[owner]
    wait_for(lambda: agent.accounts(FIN) == +expected, timeout=5, interval=0.05,
             what="the customer's re-read in /metrics")
    print(f"event to /metrics: {time.monotonic() - sent:.2f}s")
    assert agent.sweeps(FIN) == sweeps  # no sweep did it
    assert agent.value("openfinance_webhook_events_total", source=FIN, kind="done",
                  result="accepted") == 1
    assert agent.value("openfinance_push_refresh_duration_seconds_count", source=FIN) == 1

    # a replay of the same eventId: answered, counted, not processed again
    assert signed_post(f"{hooks}/{FIN}", connect_event(owner, "1-aaaa")).status_code == 200
    assert agent.value("openfinance_webhook_events_total", source=FIN,
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
    wait_for(lambda: agent.value("openfinance_webhook_events_total",
                            result="too_large") == 1, timeout=5, what="too_large counted")
    assert agent.value("openfinance_webhook_events_total", source=FIN,
                  result="bad_signature") == 1
    assert agent.value("openfinance_webhook_events_total", source=MX,
                  result="unauthorized") == 1
    assert agent.value("openfinance_push_refresh_duration_seconds_count", source=FIN) == 1
    assert agent.accounts(FIN) == +expected
    assert agent.sweeps(FIN) == sweeps


def test_an_event_acknowledged_right_before_sigkill_is_processed_once_after_restart(stack):
    _sandbox, agent, config, hooks, tmp_path = stack
    owner = next(iter(served_owners(config, FIN)))
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
        assert restarted.value("openfinance_webhook_events_total", source=FIN,
                      result="duplicate") == 1
        db = sqlite3.connect(tmp_path / "state.db")
        try:
            assert db.execute("SELECT count(*) FROM webhook_inbox").fetchone()[0] == 1
        finally:
            db.close()
    finally:
        assert restarted.stop() == 0, restarted.log()
