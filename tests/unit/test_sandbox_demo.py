"""The demo's wiring and the sandbox parts it relies on: users who act over a spread of
nights, the receiver's listing, the per-login truth, and one configuration for both sides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from exporter.config import Settings
from exporter.demo import DemoWiring, sandbox_config
from exporter.sandbox.fleet import PERSISTENT
from exporter.sandbox.scenario import load_scenario
from tests.unit.test_sandbox_connect import find
from tests.unit.test_sandbox_support import Sandbox
from tests.unit.test_sandbox_users import RECEIVER, fix_request


def test_the_wiring_gives_both_sides_the_same_urls_and_secrets(tmp_path: Path):
    wiring = DemoWiring("http://127.0.0.1:9878", "http://127.0.0.1:9879", "127.0.0.1:9879")
    scenario = load_scenario(None, wiring.scenario_overrides(0.3, 2))
    config = wiring.agent_config(sandbox_config(wiring.sandbox_url, state_path=tmp_path / "s.db",
                                                interval=60))
    settings = Settings(**config)
    assert scenario.users.fix_share == 0.3 and scenario.users.fix_after_nights == 2
    assert scenario.users.request_secret == settings.remediation.secret.get_secret_value()
    assert settings.remediation.endpoint == "http://127.0.0.1:9878/sandbox/partner/fix-requests"
    assert settings.remediation.public_url == wiring.hooks_url
    assert settings.webhooks.listen_address == "127.0.0.1:9879"
    hooks = scenario.webhooks
    assert hooks.finicity_url == "http://127.0.0.1:9879/webhooks/finicity-sandbox"
    assert hooks.mx_url == "http://127.0.0.1:9879/webhooks/mx-sandbox"
    mx = next(s for s in settings.sources if s.provider == "mx")
    assert (hooks.mx_username, hooks.mx_password) == (
        mx.webhooks.webhook_username, mx.webhooks.webhook_password.get_secret_value())
    assert hooks.finicity_secret is None  # the sandbox's partner secret: the source's own
    other = DemoWiring(wiring.sandbox_url, wiring.hooks_url, wiring.webhook_address)
    assert other.request_secret != wiring.request_secret, "fresh secrets for every run"


def test_the_spread_must_not_end_before_it_starts():
    with pytest.raises(ValidationError):
        load_scenario(None, {"users": {"fix_after_nights": 3, "fix_after_max_nights": 2}})


async def test_users_act_over_a_spread_of_nights_and_the_listing_counts_results():
    sb = Sandbox({"users": {"fix_share": 1.0, "fix_after_nights": 1,
                            "fix_after_max_nights": 3}})
    try:
        sim = sb.runtime.fleet.finicity
        logins = [k for k in range(sim.connections) if sim.conn_role[k] == PERSISTENT][:30]
        for n, k in enumerate(logins):
            r = await sb.http.post(RECEIVER, json=fix_request(sb, "finicity", k, f"r{n}",
                                                              code="103"))
            assert r.status_code == 200
        listed = (await sb.http.get(RECEIVER)).json()
        dues = {r["due_night"] for r in listed["requests"]}
        assert dues == {1, 2, 3}
        first = listed["requests"][0]
        assert first["owner_id"] and first["login_id"] and first["institution_id"]
        assert first["code"] == "103" and first["kind"] == "fix"
        n = len(logins)
        assert n >= 10
        assert listed["results"] == {"fixed": 0, "nothing_to_fix": 0, "waiting": n, "never": 0}
        await sb.advance(1)
        results = (await sb.http.get(RECEIVER)).json()["results"]
        acted = results["fixed"] + results["nothing_to_fix"]
        assert 0 < acted < n and results["waiting"] == n - acted
        await sb.advance(2)
        results = (await sb.http.get(RECEIVER)).json()["results"]
        assert results["waiting"] == 0 and results["fixed"] > 0
    finally:
        await sb.close()


async def test_the_per_login_truth_follows_a_fix():
    sb = Sandbox({})
    try:
        k = find(sb, "mx", PERSISTENT)
        assert (await sb.http.get("/sandbox/truth/logins")).status_code == 400
        got = (await sb.http.get("/sandbox/truth/logins", params={"provider": "mx"})).json()
        assert len(got["logins"]) == sb.runtime.fleet.mx.connections
        login = got["logins"][k]
        assert not login["ok"]
        r = await sb.http.post("/sandbox/fix", params={
            "provider": "mx", "owner_id": login["owner_id"], "login_id": login["login_id"]})
        if r.json()["fixed"]:
            after = (await sb.http.get("/sandbox/truth/logins",
                                       params={"provider": "mx"})).json()["logins"][k]
            assert after["ok"] and after["codes"] == ["CONNECTED"] and not after["fixable"]
        else:
            assert not login["fixable"]
    finally:
        await sb.close()
