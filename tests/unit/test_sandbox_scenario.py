"""Scenario loading, the sandbox clock, and injected faults."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from exporter.sandbox import SandboxClock, Scenario, load_scenario
from tests.unit.test_sandbox_support import FakeTime, Sandbox


def test_packaged_default_scenario_equals_the_model_defaults():
    assert load_scenario(None) == Scenario()


def test_a_scenario_file_only_needs_the_keys_it_changes(tmp_path):
    path = tmp_path / "s.yml"
    path.write_text("night_seconds: 20\nfinicity:\n  units: 10\n  noise_codes: {103: 1}\n")
    scenario = load_scenario(path)
    assert scenario.night_seconds == 20
    assert scenario.finicity.units == 10
    assert scenario.finicity.noise_codes == {"103": 1.0}  # replaced whole, keys as strings
    assert scenario.finicity.institutions == 25
    assert scenario.mx == Scenario().mx


def test_a_typo_in_a_scenario_file_is_an_error(tmp_path):
    path = tmp_path / "s.yml"
    path.write_text("finicity:\n  unitz: 10\n")
    with pytest.raises(ValidationError, match="unitz"):
        load_scenario(path)


def test_overrides_apply_on_top_of_the_file():
    scenario = load_scenario(None, {"mx": {"units": 7}, "finicity_start_semantics": "page"})
    assert scenario.mx.units == 7 and scenario.finicity_start_semantics == "page"


def test_unknown_outage_institution_is_reported_by_id():
    with pytest.raises(ValueError, match="not in the fleet"):
        Sandbox({"finicity": {"outage": {"institution": "999"}}})


def test_with_realism_turns_faults_on_and_zero_turns_them_off():
    assert Scenario().with_realism(1).faults.active
    assert not Scenario().with_realism(0).faults.active


def test_manual_clock_moves_only_when_advanced():
    time = FakeTime()
    clock = SandboxClock(0, time_source=time)
    time.advance(10 * 86400)
    assert clock.night == 0
    assert clock.advance(2) == 2
    assert clock.night_start(0) < clock.night_start(1) < clock.night_start(2) == time()
    assert clock.advance(3) == 5  # faster than one night per second: runs ahead, still ordered
    assert [clock.night_start(n) - time() for n in (3, 4, 5)] == [1, 2, 3]


def test_auto_clock_starts_a_night_every_night_seconds_and_dates_it_at_its_boundary():
    time = FakeTime()
    clock = SandboxClock(20, time_source=time)
    time.advance(19.9)
    assert clock.night == 0
    time.advance(45)  # idle through nights 1 and 2
    assert clock.night == 3
    assert [clock.night_start(n) - clock.night_start(0) for n in (1, 2, 3)] == [20, 40, 60]
    assert clock.next_night_at() == pytest.approx(time.now - 64.9 + 80)


async def test_injected_429s_carry_retry_after_and_control_routes_are_never_faulted():
    sb = Sandbox({"faults": {"rate_limited": 1.0, "retry_after_seconds": 7}})
    try:
        r = await sb.mx("/users")
        assert r.status_code == 429 and r.headers["Retry-After"] == "7"
        assert await sb.token()  # the token call is spared unless include_auth
        assert (await sb.http.get("/sandbox/state")).status_code == 200
        stats = (await sb.http.get("/sandbox/stats")).json()
        assert stats["faults_injected"] == {"rate_limited": 1}
    finally:
        await sb.close()


async def test_injected_server_errors_are_a_share_of_requests():
    sb = Sandbox({"faults": {"server_errors": 0.3, "unavailable": 0.1}})
    try:
        codes = [(await sb.mx("/users")).status_code for _ in range(300)]
        assert 60 < codes.count(500) < 120 and 10 < codes.count(503) < 55
        assert codes.count(200) == 300 - codes.count(500) - codes.count(503)
    finally:
        await sb.close()


async def test_finicity_fault_bodies_carry_no_aggregation_code():
    sb = Sandbox({"faults": {"server_errors": 1.0}})
    try:
        body = (await sb.finicity("/aggregation/v1/customers", await sb.token())).json()
        assert not str(body["code"]).isdigit()
    finally:
        await sb.close()
