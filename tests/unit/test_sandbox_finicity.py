"""The simulated Finicity API: auth, token expiry, paging, field types, refusals."""

from __future__ import annotations

import pytest

from exporter.sandbox import FINICITY_APP_KEY, FINICITY_PARTNER_ID
from tests.unit.test_sandbox_support import Sandbox, finicity_spec, sandbox_fixture, schema_errors

AUTH = "/finicity/aggregation/v2/partners/authentication"


sb = sandbox_fixture()


async def test_token_is_issued_for_the_sandbox_credentials(sb):
    token = await sb.token()
    r = await sb.finicity("/aggregation/v1/customers", token)
    assert r.status_code == 200
    assert r.json()["found"] == 305  # 300 active + 5 testing customers


async def test_wrong_partner_secret_is_refused_with_10001(sb):
    r = await sb.http.post(AUTH, headers={"Finicity-App-Key": FINICITY_APP_KEY},
                           json={"partnerId": FINICITY_PARTNER_ID, "partnerSecret": "nope"})
    assert r.status_code == 401
    assert r.json() == {"code": "10001", "message": "Invalid credentials"}


async def test_five_failed_logins_lock_the_partner_until_unlocked(sb):
    for _ in range(5):
        await sb.http.post(AUTH, headers={"Finicity-App-Key": FINICITY_APP_KEY},
                           json={"partnerId": FINICITY_PARTNER_ID, "partnerSecret": "nope"})
    assert (await sb.state())["finicity_partner_locked"] is True
    locked = await sb.http.post(
        AUTH, headers={"Finicity-App-Key": FINICITY_APP_KEY},
        json={"partnerId": FINICITY_PARTNER_ID, "partnerSecret": "sandbox-partner-secret"})
    assert locked.status_code == 401
    await sb.http.post("/sandbox/unlock")
    assert await sb.token()


@pytest.mark.parametrize(("headers", "code"), [
    ({}, "10026"),
    ({"Finicity-App-Key": "wrong"}, "10027"),
    ({"Finicity-App-Key": FINICITY_APP_KEY}, "10024"),
    ({"Finicity-App-Key": FINICITY_APP_KEY, "Finicity-App-Token": "forged"}, "10022"),
])
async def test_missing_or_bad_key_or_token_gets_the_spec_401(sb, headers, code):
    r = await sb.http.get("/finicity/aggregation/v1/customers", headers=headers)
    assert r.status_code == 401
    assert r.json()["code"] == code


async def test_token_expires_after_two_hours_of_sandbox_clock(sb):
    token = await sb.token()
    sb.time.advance(7199)
    assert (await sb.finicity("/aggregation/v1/customers", token)).status_code == 200
    sb.time.advance(1)
    r = await sb.finicity("/aggregation/v1/customers", token)
    assert r.status_code == 401
    assert r.json() == {"code": "10023", "message": "Expired (Finicity-App-Token)"}


async def test_expire_tokens_control_call_expires_live_tokens(sb):
    token = await sb.token()
    await sb.http.post("/sandbox/expire-tokens")
    assert (await sb.finicity("/aggregation/v1/customers", token)).json()["code"] == "10023"


async def test_start_is_a_record_index_by_default(sb):
    token = await sb.token()
    first = (await sb.finicity("/aggregation/v1/customers", token, start=1, limit=10)).json()
    second = (await sb.finicity("/aggregation/v1/customers", token, start=11, limit=10)).json()
    overlap = (await sb.finicity("/aggregation/v1/customers", token, start=6, limit=10)).json()
    ids = [c["id"] for c in first["customers"] + second["customers"]]
    assert len(set(ids)) == 20
    assert [c["id"] for c in overlap["customers"]] == ids[5:15]
    assert first["displaying"] == 10 and first["moreAvailable"] is True


async def test_start_is_a_page_number_when_the_scenario_says_so():
    sb = Sandbox({"finicity_start_semantics": "page"})
    try:
        token = await sb.token()
        pages = [(await sb.finicity("/aggregation/v1/customers", token, start=s, limit=100)).json()
                 for s in (1, 2, 3, 4)]
        ids = [c["id"] for p in pages for c in p["customers"]]
        assert len(ids) == len(set(ids)) == 305
        assert [p["moreAvailable"] for p in pages] == [True, True, True, False]
    finally:
        await sb.close()


async def test_walking_to_the_end_yields_every_customer_once(sb):
    token = await sb.token()
    ids, start = [], 1
    while True:
        body = (await sb.finicity("/aggregation/v1/customers", token, start=start,
                                  limit=37)).json()
        ids += [c["id"] for c in body["customers"]]
        if not body["moreAvailable"]:
            break
        start += 37
    assert len(ids) == len(set(ids)) == body["found"] == 305
    beyond = (await sb.finicity("/aggregation/v1/customers", token, start=start + 37)).json()
    assert beyond["customers"] == [] and beyond["moreAvailable"] is False


async def test_limit_above_1000_is_capped_and_default_is_25(sb):
    token = await sb.token()
    assert (await sb.finicity("/aggregation/v1/customers", token)).json()["displaying"] == 25
    big = (await sb.finicity("/aggregation/v1/customers", token, limit=5000)).json()
    assert big["displaying"] == 305


async def test_start_below_one_is_a_400(sb):
    token = await sb.token()
    r = await sb.finicity("/aggregation/v1/customers", token, start=0)
    assert r.status_code == 400 and r.json()["code"] == "41003"


async def test_type_filter_separates_testing_customers(sb):
    token = await sb.token()
    active = (await sb.finicity("/aggregation/v1/customers", token, type="active",
                                limit=1000)).json()
    testing = (await sb.finicity("/aggregation/v1/customers", token, type="testing")).json()
    assert active["found"] == 300 and {c["type"] for c in active["customers"]} == {"active"}
    assert testing["found"] == 5 and {c["type"] for c in testing["customers"]} == {"testing"}
    accounts = await sb.finicity(
        f"/aggregation/v1/customers/{testing['customers'][0]['id']}/accounts", token)
    assert accounts.json() == {"accounts": []}


async def test_customers_payload_matches_the_spec_with_string_dates(sb):
    token = await sb.token()
    body = (await sb.finicity("/aggregation/v1/customers", token, limit=50)).json()
    assert schema_errors(finicity_spec(), "Customers", body) == []
    customer = body["customers"][0]
    assert isinstance(customer["id"], str)
    assert isinstance(customer["createdDate"], str) and customer["createdDate"].isdigit()


async def test_accounts_payload_matches_the_spec_with_integer_dates(sb):
    token = await sb.token()
    ids = await sb.all_customer_ids(token)
    seen_absent_code = False
    for cid in ids[:300]:
        body = (await sb.finicity(f"/aggregation/v1/customers/{cid}/accounts", token)).json()
        assert schema_errors(finicity_spec(), "CustomerAccounts", body) == []
        for acct in body["accounts"]:
            assert isinstance(acct["id"], str) and isinstance(acct["institutionId"], str)
            assert isinstance(acct["institutionLoginId"], int)
            if "aggregationStatusCode" in acct:
                assert isinstance(acct["aggregationStatusCode"], int)
                assert isinstance(acct["aggregationAttemptDate"], int)
                assert acct["aggregationSuccessDate"] <= acct["aggregationAttemptDate"]
            else:
                seen_absent_code = True
                assert "aggregationAttemptDate" not in acct
                assert "aggregationSuccessDate" not in acct
    assert seen_absent_code, "the fleet should hold a never-aggregated account"


async def test_simple_accounts_payload_matches_its_spec_schema(sb):
    token = await sb.token()
    cid = (await sb.all_customer_ids(token))[0]
    body = (await sb.finicity(f"/aggregation/v1/customers/{cid}/accounts/simple", token)).json()
    assert body["accounts"]
    assert schema_errors(finicity_spec(), "CustomerAccountsSimple", body) == []
    assert "balance" not in body["accounts"][0]


async def test_unknown_customer_is_a_404(sb):
    token = await sb.token()
    r = await sb.finicity("/aggregation/v1/customers/42/accounts", token)
    assert r.status_code == 404 and r.json()["code"] == "14001"


async def test_institution_lookup_matches_the_spec_and_404s_for_unknown_ids(sb):
    token = await sb.token()
    inst_id = (await sb.state())["fleet"]["finicity"]["institutions"][0]["institution_id"]
    body = (await sb.finicity(f"/institution/v2/institutions/{inst_id}", token)).json()
    assert schema_errors(finicity_spec(), "InstitutionWrapper", body) == []
    assert body["institution"]["id"] == int(inst_id)
    missing = await sb.finicity("/institution/v2/institutions/1", token)
    assert missing.status_code == 404


async def test_one_institution_has_no_display_name_so_clients_fall_back_to_name(sb):
    token = await sb.token()
    bodies = [(await sb.finicity(f"/institution/v2/institutions/{i['institution_id']}",
                                 token)).json()["institution"]
              for i in (await sb.state())["fleet"]["finicity"]["institutions"]]
    assert any("displayName" not in b for b in bodies)
    assert any("\n" in b.get("displayName", "") for b in bodies)
    assert any('"' in b.get("displayName", "") for b in bodies)


@pytest.mark.parametrize("path", [
    "/aggregation/v1/customers/1005000000/accounts",
    "/aggregation/v2/customers/1005000000/accounts",
    "/aggregation/v1/customers/1005000000/institutionLogins/1007000000/accounts",
    "/aggregation/customers/1005000000/transactions/refreshes",
])
async def test_refresh_posts_are_refused_and_counted(sb, path):
    token = await sb.token()
    r = await sb.http.post(f"/finicity{path}", headers={
        "Finicity-App-Key": FINICITY_APP_KEY, "Finicity-App-Token": token})
    assert r.status_code == 403
    stats = (await sb.http.get("/sandbox/stats")).json()
    assert stats["refresh_calls"]["total"] == 1
    assert (await sb.state())["refresh_calls"] == 1


async def test_reads_do_not_count_as_refresh_calls(sb):
    token = await sb.token()
    for cid in (await sb.all_customer_ids(token))[:20]:
        await sb.finicity(f"/aggregation/v1/customers/{cid}/accounts", token)
    stats = (await sb.http.get("/sandbox/stats")).json()
    assert stats["refresh_calls"]["total"] == 0
    assert stats["requests"]["GET /finicity/aggregation/v1/customers/{customerId}/accounts"] == 20
