"""Consent renewals end to end: the real agent against the sandbox's consent periods, a real
local receiver.

The agent reads Finicity's ``authorizationEndDate`` and shows the horizon; each login whose
consent ends within ``renew_before`` gets exactly one signed ``consent_renewal`` request with
its ``authorization_end`` and a redirect link; a user who renews (through the link, or in the
app) shows a later end and the agent counts ``renewed``; a login left unrenewed breaks with
947 on its end night and gets an ordinary fix request.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import httpx
import pytest

from tests.integration.procs import wait_for
from tests.integration.test_repair_loop import SOURCES, Receiver, redirect_rig, signature_ok

pytestmark = pytest.mark.integration

DAY = 86400
RENEW_BEFORE_DAYS = 30
SCENARIO = {
    "finicity": {"units": 200, "outage": {"enabled": False}, "maintenance": {"enabled": False},
                 "consent": {"enabled": True, "institution_ranks": [0, 1], "share": 0.8,
                             "wave_share": 0.5, "wave_nights": 3}},
    "mx": {"units": 50},
}


def _login(body: dict) -> tuple[str, str]:
    return body["customer_id"], body["login_id"]


def _renewals(receiver: Receiver) -> dict[str, dict]:
    return {i: b for i, b in receiver.bodies().items() if b["kind"] == "consent_renewal"}


@pytest.fixture
def rig(tmp_path):
    with redirect_rig(tmp_path, SCENARIO, storm_min=10_000,
                      renew_before=f"{RENEW_BEFORE_DAYS}d") as (sandbox, receiver, start):
        yield sandbox, receiver, start("agent")


def test_consent_renewals_are_sent_once_per_login_and_period_and_counted_when_renewed(rig):
    sandbox, receiver, agent = rig
    agent.wait_sweeps({name: 1 for name in SOURCES})
    agent.next_sweeps(SOURCES)

    # The horizon: Finicity accounts at the OAuth banks, cumulative windows; none at MX.
    horizon: Counter = Counter()
    for labels, value in agent.scrape().get("openfinance_consent_expiring_accounts", []):
        assert labels["provider"] == "finicity" and labels["source"] == "finicity-sandbox"
        horizon[labels["within"]] += value
    assert 0 < horizon["7d"] <= horizon["30d"] <= horizon["90d"], horizon

    wait_for(lambda: _renewals(receiver)
             and agent.value("openfinance_fix_requests_pending") == 0, 60,
             "consent renewals delivered")
    agent.next_sweeps(SOURCES)  # the sweep re-announces every consent: nothing new is sent
    renewals = _renewals(receiver)
    now = time.time()
    for headers, raw in receiver.requests:
        assert signature_ok(headers, raw)
        assert json.loads(raw)["id"] == headers["idempotency-key"]
    for body in renewals.values():
        end = datetime.strptime(body["authorization_end"], "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=UTC).timestamp()
        assert now < end <= now + RENEW_BEFORE_DAYS * DAY, body
        assert body["provider"] == "finicity" and body["broken_since"] is None
        assert body["account_ids"] and body["link"].startswith("http://127.0.0.1:")
    per_login = Counter(_login(b) for b in renewals.values())
    assert len(per_login) >= 4 and max(per_login.values()) == 1, per_login
    assert agent.value("openfinance_fix_requests_total", kind="consent_renewal",
                       result="delivered") == len(renewals)

    # Two users renew: one through the link (the agent's redirect mints a sandbox Connect Fix
    # link), one in the partner's app. The agent sees later ends and counts them renewed.
    by_end = sorted(renewals.values(), key=lambda b: (b["authorization_end"], b["login_id"]))
    linked, in_app = by_end[0], by_end[1]
    redirect = httpx.get(linked["link"], follow_redirects=False)
    assert redirect.status_code == 302, redirect.text
    page = httpx.get(redirect.headers["location"] + "&complete=1"
                     if "?" in redirect.headers["location"]
                     else redirect.headers["location"] + "?complete=1")
    assert page.status_code in (200, 303), page.text
    fixed = httpx.post(f"{sandbox.url}/sandbox/fix", params={
        "provider": "finicity", "owner_id": in_app["customer_id"],
        "login_id": in_app["login_id"]}, timeout=30)
    assert fixed.status_code == 200 and fixed.json()["fixed"], fixed.text
    agent.next_sweeps(SOURCES)
    wait_for(lambda: agent.value("openfinance_fix_outcomes_total", outcome="renewed") == 2, 60,
             "the two renewals counted")
    agent.next_sweeps(SOURCES)
    assert Counter(_login(b) for b in _renewals(receiver).values()) == per_login, (
        "a renewed login's next period ends beyond renew_before: no second request")

    # The unrenewed logins of the wave reach their end night: 947, and a fix request.
    renewed = {_login(linked), _login(in_app)}
    sandbox.advance(3)
    agent.next_sweeps(SOURCES)

    def broke_at_947() -> set[tuple[str, str]]:
        return {_login(b) for b in receiver.bodies().values()
                if b["kind"] == "fix" and b["code"] == "947"}
    wait_for(lambda: broke_at_947() & set(per_login) and agent.value(
        "openfinance_fix_requests_pending") == 0, 90, "fix requests for expired consents")
    assert not broke_at_947() & renewed, "a renewed login does not expire"
    assert agent.value("openfinance_fix_outcomes_total", outcome="renewed") == 2
