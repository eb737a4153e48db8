"""Deliveries give way to sweeps: the real agent against the sandbox, a real local receiver,
``remediation.sweep_deliveries_per_second: 0`` (nothing is sent while a sweep runs). The
agent sweeps every second, so requests go out in the gaps between sweeps: every one of them,
once, none lost to the gate."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml

from tests.integration.procs import AgentProc, Sandbox, wait_for
from tests.integration.test_repair_loop import (
    SMALL,
    SOURCES,
    Receiver,
    repair_config,
    signature_ok,
)

pytestmark = pytest.mark.integration


def test_requests_held_during_sweeps_all_go_out_once_between_them(tmp_path):
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump(SMALL))
    sandbox = Sandbox(tmp_path, scenario)
    receiver = Receiver()
    path = repair_config(tmp_path, sandbox.url, receiver.url, sweep_deliveries_per_second=0)
    agent = AgentProc(tmp_path, path)
    try:
        agent.wait_sweeps({name: 1 for name in SOURCES})
        agent.next_sweeps(SOURCES)
        sandbox.advance(1)
        agent.next_sweeps(SOURCES)
        wait_for(lambda: receiver.requests
                 and agent.value("openfinance_fix_requests_pending") == 0,
                 90, "fix requests delivered between sweeps")
        agent.next_sweeps(SOURCES)
        bodies = receiver.bodies()
        assert len(receiver.requests) == len(bodies), "each request sent once"
        assert agent.value("openfinance_fix_requests_total", result="delivered") == len(bodies)
        assert all(signature_ok(h, raw) for h, raw in receiver.requests)
        logins = Counter((b["provider"], b.get("customer_id") or b.get("user_guid"),
                          b["login_id"]) for b in map(json.loads, (r for _, r in receiver.requests)))
        assert max(logins.values()) == 1, "one request per login and episode"
    finally:
        agent.stop()
        receiver.stop()
        sandbox.stop()
