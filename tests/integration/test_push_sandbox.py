"""Push driven by the sandbox's own webhook emitter (no hand-signed posts): the real agent
and the real sandbox as two processes over HTTP, sweeps an hour apart so that only push can
move /metrics.

A user who fixes a login in the sandbox (control API) makes the sandbox send the event the
real aggregator would send (Finicity ``done`` signed with the partner secret; MX member
webhook with HTTP Basic); within 5 s exactly that owner's series show what the sandbox now
serves. Every event is delivered twice, byte for byte (``redeliver_once``): the agent
processes it once and counts the second as a duplicate.
"""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest

from tests.integration.procs import Sandbox, free_port, served_owners, wait_for
from tests.integration.push_support import (
    FIN,
    MX,
    MX_PASSWORD,
    MX_USER,
    SOURCE,
    fix_logins,
    push_stack,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def stack(tmp_path, request):
    """Sandbox + agent with push; ``request.param``: the MX source's api_version."""
    hook_port = free_port()
    hooks = f"http://127.0.0.1:{hook_port}/webhooks"
    scenario = {
        "finicity": {"units": 200}, "mx": {"units": 100},
        # the sandbox's emitter, as the aggregators would be configured
        "webhooks": {"finicity_url": f"{hooks}/{FIN}", "mx_url": f"{hooks}/{MX}",
                     "mx_username": MX_USER, "mx_password": MX_PASSWORD,
                     "redeliver_once": True, "retry_seconds": 0.5},
    }

    def mx_version(doc: dict) -> None:
        for src in doc["sources"]:
            if src["provider"] == "mx":
                src["api_version"] = getattr(request, "param", "v20250224")

    with push_stack(tmp_path, scenario, hook_port, edit=mx_version) as (sandbox, agent, config):
        yield sandbox, agent, config


def fix_one(sandbox: Sandbox, provider: str) -> dict:
    """A user of the sandbox repairs one login that has a fixable code (control API)."""
    [(_login, fixed)] = fix_logins(sandbox, provider)
    return fixed


def sandbox_webhooks(sandbox: Sandbox) -> dict:
    return httpx.get(f"{sandbox.url}/sandbox/webhooks", timeout=10).json()


@pytest.mark.parametrize(("provider", "kind", "stack"), [
    ("finicity", "done", "v20250224"), ("mx", "member", "v20250224"),
    ("mx", "member", "v20111101")], indirect=["stack"])
def test_a_users_fix_in_the_sandbox_reaches_metrics_within_seconds_once(stack, provider, kind):
    """Sweeps and the pushed re-read, with MX in both API versions the agent speaks."""
    sandbox, agent, config = stack
    source = SOURCE[provider]
    before_owners = served_owners(config, source)
    before = agent.accounts(source)
    assert before == sum(before_owners.values(), Counter()), "the first sweep is the baseline"
    sweeps = agent.sweeps(source)
    assert sandbox_webhooks(sandbox)["counters"].get("queued", 0) == 0

    sent = time.monotonic()
    owner = fix_one(sandbox, provider)["owner_id"]

    after_owners = served_owners(config, source)
    assert after_owners[owner] != before_owners[owner], "the fix changed what the sandbox serves"
    assert all(after_owners[o] == before_owners[o] for o in before_owners if o != owner)
    expected = before - before_owners[owner] + after_owners[owner]
    wait_for(lambda: agent.accounts(source) == +expected, timeout=5, interval=0.05,
             what="the owner's re-read in /metrics")
    print(f"{provider} fix in the sandbox to /metrics: {time.monotonic() - sent:.2f}s")
    assert agent.sweeps(source) == sweeps, "no sweep did it"

    # The sandbox delivered the event twice, byte for byte; the agent processed it once.
    wait_for(lambda: sandbox_webhooks(sandbox)["pending"] == 0, timeout=10,
             what="the sandbox's deliveries")
    hooks = sandbox_webhooks(sandbox)
    assert hooks["counters"]["redelivered"] >= 1
    ours = [e for e in hooks["recent"] if e["owner_id"] == owner]
    assert ours and all(e["deliveries"] == 2 and e["status"] == "delivered" for e in ours)
    wait_for(lambda: agent.value("openfinance_webhook_events_total", source=source,
                            result="duplicate") == len(ours), timeout=5,
             what="the redeliveries counted as duplicates")
    assert agent.value("openfinance_webhook_events_total", source=source, kind=kind,
                  result="accepted") == 1
    assert agent.value("openfinance_webhook_events_total", source=source,
                  result="accepted") == len(ours)
    assert agent.value("openfinance_push_refresh_duration_seconds_count", source=source) == 1
    for refused in ("bad_signature", "unauthorized", "malformed"):
        assert agent.value("openfinance_webhook_events_total", result=refused) == 0
    assert agent.accounts(source) == +expected
    assert agent.sweeps(source) == sweeps
