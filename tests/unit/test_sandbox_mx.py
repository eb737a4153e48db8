"""The simulated MX Platform API: Basic auth, versioned Accept, paging, member fields."""

from __future__ import annotations

import base64
import math

import pytest

from exporter.sandbox import MX_CLIENT_ID
from tests.unit.test_sandbox_support import (
    MX_ACCEPT,
    MX_AUTH,
    MX_HEADERS,
    mx_spec,
    sandbox_fixture,
    schema_errors,
)

sb = sandbox_fixture()


async def test_wrong_basic_credentials_get_401(sb):
    bad = "Basic " + base64.b64encode(f"{MX_CLIENT_ID}:wrong".encode()).decode()
    r = await sb.http.get("/mx/users", headers={**MX_HEADERS, "Authorization": bad})
    assert r.status_code == 401
    assert "error" in r.json()
    missing = await sb.http.get("/mx/users", headers={"Accept": MX_ACCEPT,
                                                      "Accept-Version": "v20250224"})
    assert missing.status_code == 401


@pytest.mark.parametrize("accept", ["application/json", "application/vnd.mx.api.v1+json"])
async def test_a_call_without_accept_version_gets_406_whatever_its_accept(sb, accept):
    """Since 2026-08-12 MX refuses every call without Accept-Version, the old versioned media
    type included."""
    r = await sb.http.get("/mx/users", headers={"Authorization": MX_AUTH, "Accept": accept})
    assert r.status_code == 406
    assert "accept-version" in r.json()["error"]["message"]


@pytest.mark.parametrize("headers", [
    {"Accept-Version": "v20260430"},  # a version MX does not serve (yet)
    {"Accept-Version": "v1"},
    {"Accept-Version": "v20111101", "Accept": "application/json"},  # v1 answers in its type
    {"Accept-Version": "v20250224", "Accept": "application/vnd.mx.api.v1+json"},
])
async def test_an_unknown_version_or_a_media_type_that_does_not_fit_gets_406(sb, headers):
    r = await sb.http.get("/mx/users", headers={**MX_HEADERS, **headers})
    assert r.status_code == 406
    assert "version" in r.json()["error"]["message"].lower()


@pytest.mark.parametrize(("version", "media"), [
    ("v20250224", "application/json"), ("v20111101", "application/vnd.mx.api.v1+json")])
async def test_both_versions_are_served_in_their_media_types(sb, version, media):
    r = await sb.http.get("/mx/users", headers={**MX_HEADERS, "Accept-Version": version,
                                                "Accept": media})
    assert r.status_code == 200
    assert r.headers["content-type"].split(";")[0] == media
    assert r.json()["users"]


async def test_institutions_answer_in_each_versions_shape(sb):
    users = await sb.all_user_guids()
    code = (await sb.mx(f"/users/{users[0]}/members")).json()["members"][0]["institution_code"]
    v2025 = (await sb.mx(f"/institutions/{code}")).json()
    assert schema_errors(mx_spec("v20250224"), "InstitutionResponseBody", v2025) == []
    inst = v2025["institution"]
    assert "transactions" in inst["supported_products"] and inst["guid"].startswith("INS-")
    assert not any(k.startswith("supports_account") for k in inst)
    v1 = (await sb.http.get(f"/mx/institutions/{code}", headers={
        **MX_HEADERS, "Accept-Version": "v20111101",
        "Accept": "application/vnd.mx.api.v1+json"})).json()
    assert schema_errors(mx_spec("v20111101"), "InstitutionResponseBody", v1) == []
    assert v1["institution"]["supports_transaction_history"] is True
    assert "supported_products" not in v1["institution"]


async def test_users_pagination_reports_total_pages(sb):
    body = (await sb.mx("/users", records_per_page=30)).json()
    assert body["pagination"] == {"current_page": 1, "per_page": 30, "total_entries": 200,
                                  "total_pages": math.ceil(200 / 30)}
    last = (await sb.mx("/users", records_per_page=30, page=7)).json()
    assert len(last["users"]) == 200 - 6 * 30
    assert (await sb.mx("/users", records_per_page=30, page=8)).json()["users"] == []


async def test_records_per_page_above_1000_falls_back_to_25_and_below_10_means_10(sb):
    assert (await sb.mx("/users", records_per_page=5000)).json()["pagination"]["per_page"] == 25
    assert (await sb.mx("/users", records_per_page=3)).json()["pagination"]["per_page"] == 10


async def test_walking_all_pages_yields_every_user_once(sb):
    guids = await sb.all_user_guids()
    assert len(guids) == len(set(guids)) == 200
    assert all(g.startswith("USR-") for g in guids)


async def test_users_and_members_match_the_spec(sb):
    body = (await sb.mx("/users", records_per_page=100)).json()
    assert schema_errors(mx_spec(), "UsersResponseBody", body) == []
    for user in body["users"][:50]:
        members = (await sb.mx(f"/users/{user['guid']}/members")).json()
        assert schema_errors(mx_spec(), "MembersResponseBody", members) == []
        for m in members["members"]:
            assert m["guid"].startswith("MBR-") and m["user_guid"] == user["guid"]


async def test_member_dates_are_iso_strings_or_null_and_manual_members_have_null_status(sb):
    statuses, manual, never = set(), 0, 0
    for guid in await sb.all_user_guids():
        for m in (await sb.mx(f"/users/{guid}/members")).json()["members"]:
            statuses.add(m["connection_status"])
            if m["is_manual"]:
                manual += 1
                assert m["connection_status"] is None and m["aggregated_at"] is None
            elif m["aggregated_at"] is None:
                never += 1
                assert m["connection_status"] == "CREATED"
            else:
                assert m["aggregated_at"].endswith("Z") and "T" in m["aggregated_at"]
                assert m["successfully_aggregated_at"] <= m["aggregated_at"]
    assert manual and never
    assert None in statuses and "CONNECTED" in statuses


async def test_some_member_names_are_personal_text_not_the_institution_name(sb):
    names, institutions = [], {i["institution_id"]: i["institution"]
                               for i in (await sb.state())["fleet"]["mx"]["institutions"]}
    for guid in (await sb.all_user_guids())[:100]:
        for m in (await sb.mx(f"/users/{guid}/members")).json()["members"]:
            names.append(m["name"] == institutions[m["institution_code"]])
    assert any(names) and not all(names)


async def test_institution_lookup_matches_the_spec_and_404s_for_unknown_codes(sb):
    code = (await sb.state())["fleet"]["mx"]["institutions"][0]["institution_id"]
    body = (await sb.mx(f"/institutions/{code}")).json()
    assert schema_errors(mx_spec(), "InstitutionResponseBody", body) == []
    assert body["institution"]["code"] == code
    assert (await sb.mx("/institutions/nosuchbank")).status_code == 404


async def test_single_member_and_status_endpoints_answer_for_the_owner_only(sb):
    users = await sb.all_user_guids()
    member = (await sb.mx(f"/users/{users[0]}/members")).json()["members"][0]
    one = (await sb.mx(f"/users/{users[0]}/members/{member['guid']}")).json()
    assert one["member"] == member
    status = (await sb.mx(f"/users/{users[0]}/members/{member['guid']}/status")).json()
    assert status["member"]["connection_status"] == member["connection_status"]
    assert (await sb.mx(f"/users/{users[1]}/members/{member['guid']}")).status_code == 404


async def test_unknown_user_guid_is_a_404(sb):
    r = await sb.mx("/users/USR-00000000-0000-0000-0000-000000000000/members")
    assert r.status_code == 404


async def test_aggregate_posts_are_refused_and_counted(sb):
    users = await sb.all_user_guids()
    member = (await sb.mx(f"/users/{users[0]}/members")).json()["members"][0]
    r = await sb.http.post(f"/mx/users/{users[0]}/members/{member['guid']}/aggregate",
                           headers=MX_HEADERS)
    assert r.status_code == 403
    stats = (await sb.http.get("/sandbox/stats")).json()
    assert stats["refresh_calls"]["by_route"] == {
        "POST /mx/users/{user_guid}/members/{member_guid}/aggregate": 1}
