"""Connect Fix on the sandbox: Finicity generate/fix and MX widget_urls with the real shapes, the
page behind the link, what completing it does to reads and to the truth, and the declared
institution status control."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from exporter.sandbox import FINICITY_PARTNER_ID
from exporter.sandbox.fleet import OTP_LOOP, PERSISTENT
from exporter.sandbox.ids import connection_id, owner_id
from tests.unit.test_sandbox_support import (
    Sandbox,
    finicity_spec,
    mx_spec,
    sandbox_fixture,
    schema_errors,
)

FIX = "/connect/v2/generate/fix"


sb = sandbox_fixture()


def find(sb: Sandbox, provider: str, role: int, *, fixable: bool = True) -> int:
    """A connection with ``role`` whose code now is (not) fixable, away from any outage."""
    fleet = sb.runtime.fleet
    sim = fleet.sim(provider)
    down = {o.inst for o in sim.outages}
    for k in range(sim.connections):
        if sim.conn_role[k] != role or sim.conn_inst[k] in down:
            continue
        if fleet.catalog.lookup(provider, fleet.current_code(provider, k)).fixable == fixable:
            return k
    raise AssertionError(f"no {provider} connection with role {role}")


def ids(sb: Sandbox, provider: str, k: int) -> tuple[str, str]:
    sim = sb.runtime.fleet.sim(provider)
    return owner_id(sim, k), connection_id(sim, k)


async def finicity_codes(sb: Sandbox, token: str, customer: str, login: str) -> list[dict]:
    r = await sb.finicity(f"/aggregation/v1/customers/{customer}/accounts", token)
    assert r.status_code == 200, r.text
    return [a for a in r.json()["accounts"] if str(a["institutionLoginId"]) == login]


async def fix_link(sb: Sandbox, token: str, customer: str, login: str, **extra) -> str:
    r = await sb.finicity_post(FIX, token, {"partnerId": FINICITY_PARTNER_ID,
                                            "customerId": customer, "institutionLoginId": login,
                                            **extra})
    assert r.status_code == 200, r.text
    assert schema_errors(finicity_spec(), "ConnectUrl", r.json()) == []
    return r.json()["link"]


def fixable_accounts(truth: dict) -> int:
    return sum(row["fixable"] for row in truth["accounts"])


async def test_finicity_fix_link_repairs_the_login_on_completion(sb):
    token = await sb.token()
    k = find(sb, "finicity", PERSISTENT)
    customer, login = ids(sb, "finicity", k)
    before = await finicity_codes(sb, token, customer, login)
    assert before and all(a["aggregationStatusCode"] != 0 for a in before)
    truth_before = await sb.truth()

    link = await fix_link(sb, token, customer, login)
    parts = urlsplit(link)
    assert parts.netloc == "sandbox" and parts.path.startswith("/connect/fix/")
    query = parse_qs(parts.query)
    assert query["customerId"] == [customer] and query["type"] == ["fix"]
    assert int(query["ttl"][0]) - int(query["timestamp"][0]) == 7_200_000

    page = await sb.http.get(parts.path)
    assert page.status_code == 200 and "Complete the repair" in page.text
    assert await finicity_codes(sb, token, customer, login) == before  # opening fixes nothing

    sb.time.advance(120)
    done = await sb.http.get(parts.path, params={"complete": "1"})
    assert done.status_code == 200 and "repaired" in done.text
    after = await finicity_codes(sb, token, customer, login)
    assert {a["aggregationStatusCode"] for a in after} == {0}
    assert {a["aggregationAttemptDate"] for a in after} == {int(sb.time.now)}
    assert {a["aggregationSuccessDate"] for a in after} == {int(sb.time.now)}
    assert fixable_accounts(await sb.truth()) == fixable_accounts(truth_before) - len(after)

    await sb.advance(1)  # a credentials problem stays cured on the next nights
    nightly = await finicity_codes(sb, token, customer, login)
    assert all(a["aggregationAttemptDate"] > int(sb.time.now) - 5 for a in nightly)
    assert {a["aggregationStatusCode"] for a in nightly} <= {0, 103, 108, 102, 580, 320, 109,
                                                            945}  # ok or nightly noise


async def test_an_otp_loop_asks_again_on_the_night_after_its_fix(sb):
    await sb.advance(1)
    token = await sb.token()
    k = find(sb, "finicity", OTP_LOOP)
    customer, login = ids(sb, "finicity", k)
    link = await fix_link(sb, token, customer, login)
    r = await sb.http.post(f"/sandbox/connect/{urlsplit(link).path.rsplit('/', 1)[1]}/complete")
    assert r.status_code == 200 and r.json()["fixed"] is True
    assert r.json()["code_before"] == "185" and r.json()["code_after"] == "0"
    await sb.advance(1)
    codes = {a["aggregationStatusCode"] for a in await finicity_codes(sb, token, customer, login)}
    assert codes == {185}


async def test_a_login_that_is_ok_or_in_an_outage_is_not_changed_by_a_fix(sb):
    await sb.advance(3)  # the outage nights
    token = await sb.token()
    sim = sb.runtime.fleet.finicity
    outage = next(o for o in sim.outages if o.kind == "outage")
    k = next(k for k in range(sim.connections) if sim.conn_inst[k] == outage.inst
             and sb.runtime.fleet.current_code("finicity", k) in ("910", "905"))
    customer, login = ids(sb, "finicity", k)
    before = await finicity_codes(sb, token, customer, login)
    link = await fix_link(sb, token, customer, login)
    r = await sb.http.get(urlsplit(link).path, params={"complete": "1"})
    assert r.status_code == 200 and "nothing to repair" in r.text
    assert await finicity_codes(sb, token, customer, login) == before


async def test_fix_link_redirects_expires_and_can_be_single_use(sb):
    token = await sb.token()
    customer, login = ids(sb, "finicity", find(sb, "finicity", PERSISTENT))
    link = await fix_link(sb, token, customer, login, redirectUri="https://app.example/back?x=1",
                          singleUseUrl=True)
    path = urlsplit(link).path
    r = await sb.http.get(path, params={"complete": "1"})
    assert r.status_code == 303
    assert r.headers["location"] == "https://app.example/back?x=1&reason=complete&code=200"
    assert (await sb.http.get(path)).status_code == 410  # single use: gone once completed

    reusable = urlsplit(await fix_link(sb, token, customer, login)).path
    assert (await sb.http.get(reusable, params={"complete": "1"})).status_code == 200
    assert (await sb.http.get(reusable, params={"complete": "1"})).status_code == 200
    sb.time.advance(7200)
    assert (await sb.http.get(reusable)).status_code == 410
    assert (await sb.http.get("/connect/fix/not-a-token")).status_code == 404


@pytest.mark.parametrize(("body", "status", "code"), [
    ({}, 400, "10002"),
    ({"partnerId": "999", "customerId": "1005000001", "institutionLoginId": "1007000001"},
     400, "10002"),
    ({"partnerId": FINICITY_PARTNER_ID, "customerId": "42", "institutionLoginId": "1"},
     400, "10010"),
    ({"partnerId": FINICITY_PARTNER_ID, "customerId": "1005000000",
      "institutionLoginId": "1007999999"}, 404, "38007"),
    ({"partnerId": FINICITY_PARTNER_ID, "customerId": "1005000000",
      "institutionLoginId": "1007000000", "webhookData": "not an object"}, 400, "10002"),
])
async def test_generate_fix_refuses_bad_requests_with_the_spec_codes(sb, body, status, code):
    r = await sb.finicity_post(FIX, await sb.token(), body)
    assert (r.status_code, r.json()["code"]) == (status, code)


async def test_generate_fix_needs_a_token_like_every_partner_call(sb):
    r = await sb.finicity_post(FIX, "no-such-token", {})
    assert r.status_code == 401 and r.json()["code"] == "10022"
    assert sb.runtime.links.issued == 0


async def test_mx_widget_url_repairs_the_member_once(sb):
    k = find(sb, "mx", PERSISTENT)
    user, member = ids(sb, "mx", k)
    status_path = f"/users/{user}/members/{member}/status"
    assert (await sb.mx(status_path)).json()["member"]["connection_status"] != "CONNECTED"
    r = await sb.mx_post(f"/users/{user}/widget_urls", {"widget_url": {
        "widget_type": "connect_widget", "current_member_guid": member,
        "disable_institution_search": True}})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert schema_errors(mx_spec("v20250224"), "WidgetResponseBody", r.json()) == []
    widget = r.json()["widget_url"]
    assert widget["type"] == "connect_widget" and widget["user_id"].startswith("partner-user-")
    path = urlsplit(widget["url"]).path
    assert (await sb.http.get(path, params={"complete": "1"})).status_code == 200
    status = (await sb.mx(status_path)).json()["member"]
    assert status["connection_status"] == "CONNECTED" and status["is_authenticated"] is True
    member_body = (await sb.mx(f"/users/{user}/members/{member}")).json()["member"]
    assert member_body["successfully_aggregated_at"] == member_body["aggregated_at"]
    assert (await sb.http.get(path)).status_code == 410  # MX URLs serve one use


async def test_mx_widget_url_expires_after_ten_minutes(sb):
    user, member = ids(sb, "mx", find(sb, "mx", PERSISTENT))
    r = await sb.mx_post(f"/users/{user}/widget_urls", {"widget_url": {
        "widget_type": "connect_widget", "current_member_guid": member}})
    path = urlsplit(r.json()["widget_url"]["url"]).path
    sb.time.advance(601)
    assert (await sb.http.get(path, params={"complete": "1"})).status_code == 410


async def test_mx_widget_urls_refuses_bad_requests_and_bad_credentials(sb):
    user, member = ids(sb, "mx", find(sb, "mx", PERSISTENT))
    other_user, _ = ids(sb, "mx", sb.runtime.fleet.mx.unit_conn_start[150])
    assert (await sb.mx_post(f"/users/{user}/widget_urls", {"widget_url": {}})).status_code == 400
    wrong_owner = await sb.mx_post(f"/users/{other_user}/widget_urls", {"widget_url": {
        "widget_type": "connect_widget", "current_member_guid": member}})
    assert wrong_owner.status_code == 404
    assert (await sb.mx_post("/users/USR-nope/widget_urls", {})).status_code == 404
    anonymous = await sb.http.post(f"/mx/users/{user}/widget_urls", json={"widget_url": {
        "widget_type": "connect_widget"}}, headers={"Accept": "application/json",
                                                    "Accept-Version": "v20250224"})
    assert anonymous.status_code == 401


async def test_control_api_lists_links_and_fixes_without_a_link(sb):
    k = find(sb, "mx", PERSISTENT)
    user, member = ids(sb, "mx", k)
    r = await sb.http.post("/sandbox/fix", params={"provider": "mx", "owner_id": user,
                                                   "login_id": member})
    assert r.status_code == 200 and r.json()["fixed"] is True
    assert r.json()["code_after"] == "CONNECTED"
    again = await sb.http.post("/sandbox/fix", params={"provider": "mx", "owner_id": user,
                                                       "login_id": member})
    assert again.json()["fixed"] is False  # nothing left to fix
    missing = await sb.http.post("/sandbox/fix", params={"provider": "mx", "owner_id": user,
                                                         "login_id": "MBR-nope"})
    assert missing.status_code == 404
    token = await sb.token()
    customer, login = ids(sb, "finicity", find(sb, "finicity", PERSISTENT))
    await fix_link(sb, token, customer, login)
    listed = (await sb.http.get("/sandbox/connect")).json()
    assert listed["issued"] == 1
    assert listed["links"][0]["login_id"] == login and listed["links"][0]["state"] == "open"


async def test_declared_status_can_be_set_and_cleared_over_the_control_api(sb):
    token = await sb.token()
    inst = (await sb.state())["fleet"]["finicity"]["institutions"][5]["institution_id"]

    async def declared():
        body = (await sb.finicity(f"/institution/v2/institutions/{inst}", token)).json()
        return body["institution"]["status"], body["institution"]["productionStatus"]

    assert (await declared())[0] == "online"
    r = await sb.http.post("/sandbox/declare", json={"institution_id": inst, "status": "offline"})
    assert r.status_code == 200 and r.json()["declared_status"] == "offline"
    status, production = await declared()
    assert status == "offline" and production["overallStatus"] == "offline"
    assert production["transAgg"] == "offline"
    await sb.http.post("/sandbox/declare", json={"institution_id": inst, "status": None})
    assert (await declared())[0] == "online"
    bad = await sb.http.post("/sandbox/declare", json={"institution_id": inst, "status": "down"})
    assert bad.status_code == 400
    unknown = await sb.http.post("/sandbox/declare", json={"institution_id": "1",
                                                           "status": "offline"})
    assert unknown.status_code == 404
