"""Push under load, with the real agent over HTTP against the real sandbox (no sweep runs).

A signed event for every customer arrives at once, each also redelivered, and the sandbox
answers in 50 ms: re-reads of many owners finish together and are applied in shared
tracker sessions (group apply; the agent's debug log shows it happened). Every user's fix
made in the sandbox beforehand must reach /metrics (one event per customer: a re-read
dropped from a group apply would not be made up by a later one), the other customers'
series must not move, each event must be applied exactly once and each redelivery counted
as a duplicate. No timing is asserted (the benchmark,
``bench/bench_webhooks.py --agent --rate``, measures the latency).
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections import Counter

import httpx
import pytest

from tests.integration.procs import free_port, served_owners, wait_for
from tests.integration.push_support import (
    FIN,
    connect_event,
    fix_logins,
    push_stack,
    signed_headers,
)

pytestmark = pytest.mark.integration

FIXES = 10
GROUP_APPLY = re.compile(r"applied (\d+) re-reads together")


@pytest.fixture
def stack(tmp_path):
    hook_port = free_port()

    def finicity_only(doc: dict) -> None:
        doc["webhooks"]["concurrency"] = 8
        doc["sources"] = [s for s in doc["sources"] if s["name"] == FIN]

    scenario = {"finicity": {"units": 200}, "mx": {"units": 20},
                "faults": {"slow": 1.0, "slow_seconds": 0.05}}
    with push_stack(tmp_path, scenario, hook_port, edit=finicity_only,
                    sources=(FIN,)) as (sandbox, agent, config):
        yield sandbox, agent, config, f"http://127.0.0.1:{hook_port}/webhooks/{FIN}", tmp_path


async def post_all(url: str, bodies: list[bytes]) -> Counter:
    """Post every body at once over 32 connections; returns the answers' status counts."""
    gate = asyncio.Semaphore(32)
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def post(body: bytes) -> int:
            async with gate:
                answer = await client.post(url, content=body, headers=signed_headers(body))
                return answer.status_code
        return Counter(await asyncio.gather(*(post(b) for b in bodies)))


def test_many_owners_at_once_each_fix_reaches_metrics_and_each_event_applies_once(stack):
    sandbox, agent, config, url, tmp_path = stack
    before_owners = served_owners(config, FIN)
    assert agent.accounts(FIN) == sum(before_owners.values(), Counter())
    sweeps = agent.sweeps(FIN)
    fixed = {login["owner_id"] for login, _ in fix_logins(sandbox, "finicity", FIXES)}
    after_owners = served_owners(config, FIN)
    assert {o for o in after_owners if after_owners[o] != before_owners.get(o)} == fixed
    owners = sorted(after_owners)
    reads_before = sandbox.stats()["requests"]

    events = [connect_event(owner, f"e-{owner}") for owner in owners]
    redeliveries = list(events)
    statuses = asyncio.run(post_all(url, events + redeliveries))
    assert statuses == {200: len(events) + len(redeliveries)}

    wait_for(lambda: agent.accounts(FIN) == sum(after_owners.values(), Counter()), timeout=60,
             interval=0.1, what="every fix in /metrics")

    def inbox() -> tuple[int, int]:
        db = sqlite3.connect(tmp_path / "state.db")
        try:
            return db.execute("SELECT count(*) - count(done_at), count(done_at) "
                              "FROM webhook_inbox").fetchone()
        finally:
            db.close()
    wait_for(lambda: inbox() == (0, len(events)), timeout=60, what="every event done")
    assert agent.value("openfinance_webhook_events_total", source=FIN, kind="done",
                  result="accepted") == len(events)
    assert agent.value("openfinance_webhook_events_total", source=FIN,
                  result="duplicate") == len(redeliveries)
    # each event observed applied exactly once, none failed
    assert agent.value("openfinance_push_refresh_duration_seconds_count",
                  source=FIN) == len(events)
    assert agent.value("openfinance_push_refresh_failures_total", source=FIN) == 0
    reads = sum(n - reads_before.get(route, 0)
                for route, n in sandbox.stats()["requests"].items() if "accounts" in route)
    assert reads == len(owners)  # one re-read per customer
    groups = [int(n) for n in GROUP_APPLY.findall(agent.log())]
    assert sum(groups) == len(owners)
    assert max(groups) > 1, "no re-reads were applied together"
    assert agent.accounts(FIN) == sum(after_owners.values(), Counter())
    assert agent.sweeps(FIN) == sweeps, "no sweep did it"
