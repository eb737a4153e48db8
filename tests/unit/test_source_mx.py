"""MxSource against an in-memory MX Platform API (httpx.MockTransport)."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from exporter.config import MxSourceConfig
from exporter.records import AccountStatus
from exporter.sources.base import AuthLockoutRisk, SweepFailed
from exporter.sources.errors import MalformedResponse, UpstreamStatusError
from exporter.upstreams import build_source
from exporter.upstreams.mx import MxSource
from tests.unit.support import FakeTime, Recorder, Sink, load_fixture

CLIENT_ID, API_KEY = "client-id-1234", "api-key-abcdef0123456789"
MEDIA_TYPES = {"v20250224": "application/json", "v20111101": "application/vnd.mx.api.v1+json"}
U1 = "USR-fa7537f3-48aa-a683-a02a-b18940482f54"
U2 = "USR-0c5a2a43-7b2f-4c4e-9a11-5d1e0f2c9b01"
U3 = "USR-9d1f7e2a-3c4b-4f5e-8a6d-7b8c9d0e1f23"


def fixture(name: str) -> dict:
    return load_fixture("mx", name)


def member(guid: str, user: str, institution: str = "mxbank", status: str | None = "CONNECTED",
           **fields) -> dict:
    return {"guid": guid, "user_guid": user, "institution_code": institution, "connection_status": status,
            "aggregated_at": "2016-10-13T18:07:57.000Z", "successfully_aggregated_at": "2016-10-13T18:07:57.000Z",
            "is_being_aggregated": False, "name": "MX Bank", **fields}


class FakeMx:
    """Pages any list by ``page``/``records_per_page`` with a ``pagination`` object, like MX."""

    def __init__(self, users: list[dict] | None = None, members: dict[str, list[dict]] | None = None,
                 institutions: dict[str, dict] | None = None):
        if users is None:
            users = fixture("users_page1.json")["users"] + fixture("users_page2.json")["users"]
            members = {u["guid"]: fixture(f"members_{u['guid']}.json")["members"] for u in users}
            institutions = {c: fixture(f"institution_{c}.json") for c in ("mxbank", "chase")}
        self.users, self.members, self.institutions = users, members or {}, institutions or {}
        self.status = 200
        self.users_status = 200
        self.failing_users: set[str] = set()
        self.total_pages_override: int | None = None
        self.ignore_page = False
        self.log: list[httpx.Request] = []
        self.served = set(MEDIA_TYPES)  # the versions answered; others get 406
        self.throttle_once: str | None = None  # a path answered once with 429 Retry-After: 3
        self.widget_answer: dict = {"widget_url": {"type": "connect_widget", "user_id": "u-1",
                                                   "url": "https://int-widgets.moneydesktop.com/md/connect/t0k"}}

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def calls(self, prefix: str) -> list[httpx.Request]:
        return [r for r in self.log if r.url.path.startswith(prefix)]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.log.append(request)
        if request.headers.get("Accept-Version") not in self.served:  # as MX since 2026-08-12
            return httpx.Response(406, json={"error": {"message": "Request header must have "
                                                       "required property 'accept-version'"}})
        assert request.headers["Accept"] == MEDIA_TYPES[request.headers["Accept-Version"]]
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{API_KEY}".encode()).decode()
        if self.status == 401 or request.headers.get("Authorization") != expected:
            return httpx.Response(401, json={"error": {"message": "Invalid MX-API-Key or MX-Client-ID"}})
        if request.url.path == self.throttle_once:
            self.throttle_once = None
            return httpx.Response(429, headers={"Retry-After": "3"})
        parts = request.url.path.strip("/").split("/")
        if request.method == "POST" and len(parts) == 3 and parts[2] == "widget_urls":
            assert request.headers["Content-Type"] == "application/json"
            if parts[1] not in self.members:
                return httpx.Response(404, json={"error": {"message": "User not found"}})
            return httpx.Response(200, json=self.widget_answer)
        assert request.method == "GET", "the monitor never writes to MX but for widget URLs"
        if parts == ["users"]:
            if self.users_status != 200:
                return httpx.Response(self.users_status)
            return self.page(request, "users", self.users)
        if len(parts) == 3 and parts[0] == "users" and parts[2] == "members":
            if parts[1] in self.failing_users:
                return httpx.Response(500)
            if parts[1] not in self.members:
                return httpx.Response(404, json={"error": {"message": "User not found"}})
            return self.page(request, "members", self.members[parts[1]])
        if parts[0] == "institutions" and len(parts) == 2:
            if parts[1] not in self.institutions:
                return httpx.Response(404, json={"error": {"message": "Institution not found"}})
            return httpx.Response(200, json=self.institutions[parts[1]])
        return httpx.Response(404)

    def page(self, request: httpx.Request, key: str, items: list[dict]) -> httpx.Response:
        page = 1 if self.ignore_page else int(request.url.params["page"])
        per_page = int(request.url.params["records_per_page"])
        total_pages = -(-len(items) // per_page)
        if self.total_pages_override is not None:
            total_pages = self.total_pages_override
        chunk = items[(page - 1) * per_page: page * per_page]
        return httpx.Response(200, json={key: chunk, "pagination": {
            "current_page": page, "per_page": per_page, "total_entries": len(items),
            "total_pages": total_pages}})


def make_source(server: FakeMx, *, time: FakeTime | None = None, observer: Recorder | None = None,
                **overrides) -> MxSource:
    time = time or FakeTime()
    values = {"name": "mx-test", "provider": "mx", "base_url": "https://int-api.mx.test",
              "client_id": CLIENT_ID, "api_key": API_KEY, "http": {"max_retries": 1}, **overrides}
    return MxSource(MxSourceConfig(**values), observer or Recorder(), clock=time, monotonic=time,
                    sleep=time.sleep, random=lambda: 0.5, transport=server.transport())


def many_users(count: int, members_each: int = 1) -> FakeMx:
    users = [{"guid": f"USR-{i:04d}", "is_disabled": False} for i in range(count)]
    members = {u["guid"]: [member(f"MBR-{u['guid'][4:]}-{j}", u["guid"]) for j in range(members_each)]
               for u in users}
    return FakeMx(users, members, {"mxbank": {"institution": {"code": "mxbank", "name": "MX Bank"}}})


async def test_a_sweep_turns_recorded_members_into_account_statuses():
    sink = Sink()
    report = await make_source(FakeMx()).sweep(sink)
    records = sink.by_key()
    assert report.complete and report.units_total == 2 and report.records == 4  # disabled user skipped
    assert records["MBR-7c6f361b-e582-15b6-60c0-358f12466b4b"] == AccountStatus(
        source="mx-test", provider="mx", account_key="MBR-7c6f361b-e582-15b6-60c0-358f12466b4b",
        institution_id="mxbank", institution="MX Bank", code="CHALLENGED",
        attempt_ts=1476382077.0, success_ts=1476295058.0,
        owner_id=U1, login_id="MBR-7c6f361b-e582-15b6-60c0-358f12466b4b")
    manual = records["MBR-3c4d5e6f-7081-92a3-b4c5-d6e7f8091a2b"]
    assert (manual.code, manual.attempt_ts, manual.success_ts) == ("NONE", None, None)


async def test_an_attempt_counts_only_once_aggregation_has_settled():
    sink = Sink()
    await make_source(FakeMx()).sweep(sink)
    running = sink.by_key()["MBR-2b3c4d5e-6f70-8192-a3b4-c5d6e7f8091a"]  # is_being_aggregated: true
    assert running.code == "DEGRADED" and running.attempt_ts is None and running.success_ts is not None


async def test_the_institution_name_never_comes_from_the_member_name():
    server = FakeMx()
    del server.institutions["chase"]
    sink = Sink()
    await make_source(server).sweep(sink)
    record = sink.by_key()["MBR-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"]  # member.name is personal text
    assert record.institution == "chase"
    assert all("Alex" not in r.institution for r in sink.records)


async def test_institution_names_come_from_the_institution_endpoint_and_are_cached():
    server = FakeMx()
    source = make_source(server)
    first, second = Sink(), Sink()
    await source.sweep(first)
    await source.sweep(second)
    assert first.by_key()["MBR-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"].institution == "Chase Bank"
    assert len(server.calls("/institutions/")) == 2


async def test_users_and_members_are_paged_until_total_pages():
    server = many_users(25, members_each=12)
    sink = Sink()
    report = await make_source(server, page_size=2).sweep(sink)  # records_per_page clamps to 10
    assert report.complete and len(sink.records) == 25 * 12
    assert [r.url.params["page"] for r in server.calls("/users") if r.url.path == "/users"] == ["1", "2", "3"]
    assert {r.url.params["records_per_page"] for r in server.log if "page" in r.url.params} == {"10"}
    assert len(server.calls(f"/users/{server.users[0]['guid']}/members")) == 2


async def test_records_per_page_is_capped_at_1000():
    server = many_users(3)
    await make_source(server, page_size=1000).sweep(Sink())
    assert server.log[0].url.params["records_per_page"] == "1000"


async def test_paging_stops_at_an_empty_page_even_if_total_pages_says_more():
    server = many_users(12)
    server.total_pages_override = 50
    report = await make_source(server, page_size=10).sweep(Sink())
    assert report.units_total == 12
    assert len([r for r in server.log if r.url.path == "/users"]) == 3


async def test_a_server_that_ignores_the_page_parameter_does_not_loop():
    server = many_users(15)
    server.ignore_page, server.total_pages_override = True, 1000
    await make_source(server, page_size=10).sweep(Sink())
    assert len([r for r in server.log if r.url.path == "/users"]) == 2


async def test_disabled_users_are_included_when_configured():
    server = FakeMx()
    report = await make_source(server, include_disabled_users=True).sweep(Sink())
    assert report.units_total == 3
    assert len(server.calls(f"/users/{U3}/members")) == 1


async def test_basic_auth_and_the_v1_accept_header_are_sent_on_every_request():
    server = FakeMx()
    await make_source(server).sweep(Sink())
    assert server.log and all(r.headers["Authorization"].startswith("Basic ") for r in server.log)


async def test_a_401_stops_the_source_and_the_next_sweep_makes_no_request():
    server, observer = FakeMx(), Recorder()
    server.status = 401
    source = make_source(server, observer=observer)
    with pytest.raises(AuthLockoutRisk):
        await source.sweep(Sink())
    assert observer.auth_failures == ["mx-test"]
    server.status = 200
    with pytest.raises(AuthLockoutRisk):
        await source.sweep(Sink())
    assert len(server.log) == 1


async def test_a_user_whose_members_fail_after_retries_makes_the_sweep_partial():
    server, time = FakeMx(), FakeTime()
    server.failing_users.add(U2)
    sink = Sink()
    report = await make_source(server, time=time).sweep(sink)
    assert not report.complete and report.units_failed == 1 and report.units_total == 2
    assert {r.account_key for r in sink.records} == {
        "MBR-7c6f361b-e582-15b6-60c0-358f12466b4b", "MBR-1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"}
    assert len(server.calls(f"/users/{U2}/members")) == 2 and time.sleeps == [0.25]


async def test_a_user_list_failure_raises_sweep_failed():
    server = FakeMx()
    server.users_status = 503
    with pytest.raises(SweepFailed) as caught:
        await make_source(server).sweep(Sink())
    assert not isinstance(caught.value, AuthLockoutRisk)


async def test_member_dates_as_iso_strings_or_epoch_numbers_are_parsed_and_absurd_ones_counted():
    server = many_users(1)
    server.members["USR-0000"] = [
        member("MBR-a", "USR-0000", aggregated_at=1476382077, successfully_aggregated_at="1476295058"),
        member("MBR-b", "USR-0000", aggregated_at="2016-10-13T18:07:57+00:00",
               successfully_aggregated_at="3016-01-01T00:00:00Z"),
    ]
    observer, sink = Recorder(), Sink()
    await make_source(server, observer=observer).sweep(sink)
    a, b = sink.by_key()["MBR-a"], sink.by_key()["MBR-b"]
    assert (a.attempt_ts, a.success_ts) == (1476382077.0, 1476295058.0)
    assert (b.attempt_ts, b.success_ts) == (1476382077.0, None)
    assert observer.invalid == ["invalid_timestamp"]


async def test_members_missing_fields_or_with_an_unusable_status_are_skipped_and_counted():
    server = many_users(1)
    server.members["USR-0000"] += [
        {"guid": "MBR-x", "connection_status": "CONNECTED"},
        {"institution_code": "mxbank", "connection_status": "CONNECTED"},
        member("MBR-y", "USR-0000", status=7),
    ]
    observer, sink = Recorder(), Sink()
    report = await make_source(server, observer=observer).sweep(sink)
    assert report.complete and list(sink.by_key()) == ["MBR-0000-0"]
    assert sorted(observer.invalid) == ["invalid_code", "missing_field", "missing_field"]


async def test_a_sweep_costs_the_minimum_number_of_requests():
    server = FakeMx()
    source = make_source(server)
    await source.sweep(Sink())
    # users: 1 page (25 per page); members: 1 page for each of the 2 enabled users; 2 institutions
    assert len(server.log) == 1 + 2 + 2
    server.log.clear()
    await source.sweep(Sink())
    assert len(server.log) == 1 + 2


async def test_requests_are_reported_under_their_route_templates():
    observer = Recorder()
    await make_source(FakeMx(), observer=observer).sweep(Sink())
    assert {endpoint for endpoint, _ in observer.requests} == {
        "/users", "/users/{user_identifier}/members", "/institutions/{institution_code}"}


async def test_shards_split_users_stably_and_disjointly():
    server = many_users(30)
    keys = []
    for index in (0, 1, 0):
        sink = Sink()
        await make_source(server, shard={"index": index, "count": 2}).sweep(sink)
        keys.append(set(sink.by_key()))
    assert keys[0] == keys[2] and not keys[0] & keys[1] and len(keys[0] | keys[1]) == 30


async def test_records_reach_the_sink_in_chunks_with_progress():
    server = many_users(120)
    sink = Sink()
    await make_source(server, page_size=1000).sweep(sink)
    assert len(sink.chunks) >= 3 and len(sink.records) == 120
    assert sink.progress_calls[-1] == (120, 120)


async def test_build_source_dispatches_on_the_provider():
    config = MxSourceConfig(name="mx-prod", provider="mx", client_id=CLIENT_ID, api_key=API_KEY)
    source = build_source(config, Recorder(), transport=FakeMx().transport())
    assert isinstance(source, MxSource) and source.provider == "mx"
    await source.aclose()


# ---------------------------------------------------------------------------- one user


async def test_refresh_owner_rereads_one_users_members():
    server = many_users(3, members_each=2)
    source = make_source(server)
    await source.sweep(Sink())
    server.members["USR-0001"][1]["connection_status"] = "CHALLENGED"
    server.log.clear()
    records = await source.refresh_owner("USR-0001")
    assert [(r.account_key, r.code, r.owner_id, r.login_id) for r in records] == [
        ("MBR-0001-0", "CONNECTED", "USR-0001", "MBR-0001-0"),
        ("MBR-0001-1", "CHALLENGED", "USR-0001", "MBR-0001-1")]
    assert [r.url.path for r in server.log] == ["/users/USR-0001/members"]


async def test_the_owner_comes_from_the_user_walked_when_the_member_lacks_user_guid():
    server = many_users(1)
    del server.members["USR-0000"][0]["user_guid"]
    records = await make_source(server).refresh_owner("USR-0000")
    assert records[0].owner_id == "USR-0000"


async def test_refresh_owner_of_a_user_that_is_gone_is_empty():
    assert await make_source(many_users(1)).refresh_owner("USR-gone") == []


async def test_refresh_owner_waits_out_a_429_as_long_as_retry_after_says():
    server, time, observer = many_users(1), FakeTime(), Recorder()
    server.throttle_once = "/users/USR-0000/members"
    records = await make_source(server, time=time, observer=observer).refresh_owner("USR-0000")
    assert len(records) == 1 and time.sleeps == [3.0] and observer.retries == ["rate_limited"]


async def test_refresh_owner_raises_sweep_failed_when_the_credentials_are_refused():
    server = many_users(1)
    server.status = 401
    with pytest.raises(SweepFailed):
        await make_source(server).refresh_owner("USR-0000")


async def test_owns_agrees_with_the_users_a_sharded_sweep_reads():
    server = many_users(20)
    source = make_source(server, shard={"index": 0, "count": 2})
    await source.sweep(Sink())
    read = {r.url.path.split("/")[2] for r in server.calls("/users/")}
    assert read == {u["guid"] for u in server.users if source.owns(u["guid"])} and 0 < len(read) < 20


async def test_fix_link_asks_for_a_connect_widget_on_the_broken_member():
    server, observer = many_users(1), Recorder()
    url = await make_source(server, observer=observer).fix_link("USR-0000", "MBR-0000-0")
    assert url == "https://int-widgets.moneydesktop.com/md/connect/t0k"
    request = server.log[-1]
    assert (request.method, request.url.path) == ("POST", "/users/USR-0000/widget_urls")
    assert json.loads(request.content) == {"widget_url": {
        "widget_type": "connect_widget", "current_member_guid": "MBR-0000-0",
        "disable_institution_search": True, "data_request": {"products": ["transactions"]}}}
    assert observer.requests == [("/users/{user_guid}/widget_urls", "200")]


async def test_a_v20111101_widget_asks_by_mode_not_by_products():
    server = many_users(1)
    source = make_source(server, api_version="v20111101", widget_products=["statements"])
    await source.fix_link("USR-0000", "MBR-0000-0")
    request = server.log[-1]
    assert request.headers["Accept-Version"] == "v20111101"
    assert json.loads(request.content) == {"widget_url": {
        "widget_type": "connect_widget", "current_member_guid": "MBR-0000-0",
        "disable_institution_search": True, "mode": "aggregation"}}


async def test_fix_link_for_a_user_that_is_gone_raises_an_upstream_error():
    with pytest.raises(UpstreamStatusError) as caught:
        await make_source(many_users(1)).fix_link("USR-gone", "MBR-1")
    assert caught.value.http_status == 404


async def test_a_widget_answer_without_a_url_is_counted_and_raised():
    server, observer = many_users(1), Recorder()
    server.widget_answer = {"widget_url": {"type": "connect_widget"}}
    with pytest.raises(MalformedResponse):
        await make_source(server, observer=observer).fix_link("USR-0000", "MBR-0000-0")
    assert observer.invalid == ["missing_field"]
