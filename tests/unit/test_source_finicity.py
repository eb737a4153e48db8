"""FinicitySource against an in-memory Finicity (httpx.MockTransport): paging, tokens, failures."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from exporter.config import FinicitySourceConfig
from exporter.records import AccountStatus
from exporter.sources.base import AuthLockoutRisk, SweepFailed
from exporter.sources.errors import UpstreamStatusError
from exporter.upstreams import build_source
from exporter.upstreams.finicity import FinicitySource
from tests.unit.support import NOW, FakeTime, Recorder, Sink, load_fixture

APP_KEY, PARTNER_SECRET = "app-key-0123456789abcdef", "partner-secret-aqJ5Ic4SEVx2IgDQ"


def fixture(name: str) -> dict:
    return load_fixture("finicity", name)


class FakeFinicity:
    """Just enough of the Finicity API; ``start_meaning`` picks how ``start`` is read."""

    def __init__(self, customers: list[dict] | None = None, accounts: dict[str, list] | None = None,
                 institutions: dict[str, dict] | None = None, start_meaning: str = "record_index"):
        if customers is None:
            customers = [c for n in (1, 2, 3) for c in fixture(f"customers_page{n}.json")["customers"]]
            accounts = {c["id"]: fixture(f"accounts_{c['id']}.json")["accounts"] for c in customers}
            institutions = {i: fixture(f"institution_{i}.json") for i in ("4222", "102105", "101732")}
        self.customers = customers
        self.accounts = accounts or {}
        self.institutions = institutions or {}
        self.start_meaning = start_meaning
        self.always_more = False
        self.report_found = True
        self.ignore_start = False
        self.tokens_issued = 0
        self.auth_status = 200
        self.rejected_tokens: set[str] = set()
        self.failing_customers: set[str] = set()
        self.customers_status = 200
        self.log: list[httpx.Request] = []
        self.starts: list[int] = []
        self.throttle_once: str | None = None  # a path answered once with 429 Retry-After: 3
        self.fix_status = 200

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def calls(self, prefix: str, method: str = "GET") -> list[httpx.Request]:
        return [r for r in self.log if r.url.path.startswith(prefix) and r.method == method]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.log.append(request)
        path = request.url.path
        if request.headers.get("Finicity-App-Key") != APP_KEY:
            return httpx.Response(401, json={"code": "10026", "message": "Missing parameter (Finicity-App-Key)"})
        if path == "/aggregation/v2/partners/authentication" and request.method == "POST":
            if self.auth_status != 200:
                return httpx.Response(self.auth_status, json={"code": 10001, "message": "Invalid credentials"})
            body = json.loads(request.content)
            assert body == {"partnerId": "1234583871234", "partnerSecret": PARTNER_SECRET}
            self.tokens_issued += 1
            return httpx.Response(200, json={"token": f"token-{self.tokens_issued}"})
        token = request.headers.get("Finicity-App-Token")
        if token is None or not token.startswith("token-") or int(token[6:]) > self.tokens_issued:
            return httpx.Response(401, json={"code": "10022", "message": "Invalid (Finicity-App-Token)"})
        if token in self.rejected_tokens:
            return httpx.Response(401, json={"code": "10023,", "message": "Expired (Finicity-App-Token)"})
        assert request.headers["Accept"] == "application/json"
        if path == self.throttle_once:
            self.throttle_once = None
            return httpx.Response(429, headers={"Retry-After": "3"})
        if path == "/connect/v2/generate/fix" and request.method == "POST":
            if self.fix_status != 200:
                return httpx.Response(self.fix_status, json={"code": 10010, "message": "Customer ID does not exist"})
            return httpx.Response(200, json={"link": "https://connect2.finicity.com?signature=s3cr3t"})
        assert request.method == "GET", "only authentication and Connect Fix may POST"
        parts = path.strip("/").split("/")
        if path == "/aggregation/v1/customers":
            return self.customers_page(request)
        if parts[:3] == ["aggregation", "v1", "customers"] and parts[4:] in (["accounts"], ["accounts", "simple"]):
            if parts[3] in self.failing_customers:
                return httpx.Response(503)
            if parts[3] not in self.accounts:
                return httpx.Response(404, json={"code": 14001, "message": "Customer not found"})
            return httpx.Response(200, json={"accounts": self.accounts[parts[3]]})
        if parts[:3] == ["institution", "v2", "institutions"]:
            if parts[3] not in self.institutions:
                return httpx.Response(404, json={"code": 12404, "message": "Institution not found"})
            return httpx.Response(200, json=self.institutions[parts[3]])
        return httpx.Response(404)

    def customers_page(self, request: httpx.Request) -> httpx.Response:
        if self.customers_status != 200:
            return httpx.Response(self.customers_status)
        start, limit = int(request.url.params["start"]), int(request.url.params["limit"])
        self.starts.append(start)
        if self.ignore_start:
            start = 1
        first = start - 1 if self.start_meaning == "record_index" else (start - 1) * limit
        page = self.customers[first:first + limit]
        body = {"displaying": len(page), "customers": page,
                "moreAvailable": self.always_more or first + limit < len(self.customers)}
        if self.report_found:
            body["found"] = len(self.customers)
        return httpx.Response(200, json=body)


def make_config(**overrides) -> FinicitySourceConfig:
    values = {
        "name": "finicity-test", "provider": "finicity", "base_url": "https://api.finicity.test",
        "app_key": APP_KEY, "partner_id": "1234583871234", "partner_secret": PARTNER_SECRET,
        "page_size": 2, "http": {"max_retries": 2},
    }
    values.update(overrides)
    return FinicitySourceConfig(**values)


def make_source(server: FakeFinicity, *, time: FakeTime | None = None, observer: Recorder | None = None,
                **overrides) -> FinicitySource:
    time = time or FakeTime()
    return FinicitySource(make_config(**overrides), observer or Recorder(), clock=time, monotonic=time,
                          sleep=time.sleep, random=lambda: 0.5, transport=server.transport())


def many_customers(count: int, institution: str = "4222") -> FakeFinicity:
    customers = [{"id": str(1000 + i), "username": f"u{i}", "type": "active", "createdDate": "1607450357"}
                 for i in range(count)]
    accounts = {c["id"]: [{"id": f"5{c['id']}", "institutionId": institution, "aggregationStatusCode": 0,
                           "aggregationAttemptDate": 1607450357, "aggregationSuccessDate": 1607450357}]
                for c in customers}
    institutions = {institution: {"institution": {"id": int(institution), "name": "Chase Bank"}}}
    return FakeFinicity(customers, accounts, institutions)


# ---------------------------------------------------------------------------- records


async def test_a_sweep_turns_recorded_payloads_into_account_statuses():
    sink = Sink()
    report = await make_source(FakeFinicity()).sweep(sink)
    records = sink.by_key()
    assert report.complete and report.units_total == 5 and report.units_failed == 0
    assert report.records == len(records) == 6
    assert records["5011648377"] == AccountStatus(
        source="finicity-test", provider="finicity", account_key="5011648377", institution_id="4222",
        institution="Chase", code="185", attempt_ts=1607450357.0, success_ts=1607363957.0,
        owner_id="1005061234", login_id="1007302745")
    assert records["5011648401"].institution == "FinBank Profiles - A"
    assert records["5011648423"].institution == "FinBank"  # no displayName: falls back to name
    assert records["5011648423"].code == "901"
    never = records["5011648444"]
    assert never.code == "NONE" and never.attempt_ts is None and never.success_ts is None


async def test_codes_ids_and_dates_sent_as_strings_or_numbers_are_parsed():
    server = FakeFinicity(
        customers=[{"id": 1005061234, "username": "u", "type": "active", "createdDate": "1607450357"}],
        accounts={"1005061234": [
            {"id": 5011648377, "institutionId": 4222, "aggregationStatusCode": "185",
             "aggregationAttemptDate": "1607450357", "aggregationSuccessDate": "2020-12-07T17:59:17Z"},
            {"id": "5011648378", "institutionId": "4222", "aggregationStatusCode": 0.0,
             "aggregationAttemptDate": 1607450357, "aggregationSuccessDate": 1607450357},
        ]},
        institutions={"4222": {"institution": {"id": 4222, "name": "Chase Bank", "displayName": "Chase"}}},
    )
    sink = Sink()
    await make_source(server).sweep(sink)
    first, second = sink.by_key()["5011648377"], sink.by_key()["5011648378"]
    assert (first.code, first.institution_id, first.attempt_ts, first.success_ts) == (
        "185", "4222", 1607450357.0, 1607363957.0)
    assert second.code == "0"


async def test_absurd_dates_become_none_and_are_counted():
    server = many_customers(1)
    server.accounts["1000"][0]["aggregationAttemptDate"] = 1607450357000  # milliseconds
    server.accounts["1000"][0]["aggregationSuccessDate"] = "not a date"
    observer, sink = Recorder(), Sink()
    await make_source(server, observer=observer).sweep(sink)
    assert (sink.records[0].attempt_ts, sink.records[0].success_ts) == (None, None)
    assert observer.invalid == ["invalid_timestamp", "invalid_timestamp"]


async def test_records_missing_required_fields_are_skipped_and_counted_without_failing_the_sweep():
    server = many_customers(2)
    server.customers.append({"username": "no-id", "type": "active"})
    server.accounts["1000"] += [{"institutionId": "4222", "aggregationStatusCode": 0},
                                {"id": "x1", "aggregationStatusCode": 0},
                                {"id": "x2", "institutionId": "4222", "aggregationStatusCode": "MFA?"},
                                "not an object"]
    observer, sink = Recorder(), Sink()
    report = await make_source(server, observer=observer, page_size=10).sweep(sink)
    assert report.complete and sorted(sink.by_key()) == ["51000", "51001"]
    assert sorted(observer.invalid) == ["invalid_code"] + ["missing_field"] * 4


# ---------------------------------------------------------------------------- paging


async def test_paging_with_start_as_record_index_reads_every_page_and_stops_at_the_end():
    server = FakeFinicity()
    sink = Sink()
    await make_source(server).sweep(sink)
    assert server.starts == [1, 3, 5]
    assert len(server.calls("/aggregation/v1/customers/")) == 5
    assert all(r.url.params["limit"] == "2" and r.url.params["type"] == "active"
               for r in server.calls("/aggregation/v1/customers") if r.url.path.endswith("customers"))


async def test_paging_with_start_as_page_number_is_detected_and_remembered():
    server = FakeFinicity(start_meaning="page_number")
    source = make_source(server)
    first, second = Sink(), Sink()
    assert (await source.sweep(first)).complete
    assert server.starts == [1, 3, 2]  # start=3 read as page 3 ended short of found: switch
    assert len(first.records) == 6
    server.starts.clear()
    await source.sweep(second)
    assert server.starts == [1, 2, 3]
    assert len(second.records) == 6


async def test_a_page_number_server_that_returns_a_later_page_is_still_walked_completely():
    server = many_customers(12)
    server.start_meaning = "page_number"
    sink = Sink()
    report = await make_source(server).sweep(sink)
    assert report.complete and len(sink.records) == 12
    assert len(server.starts) <= 12


async def test_a_record_index_server_is_walked_correctly_after_a_page_number_sweep():
    server = FakeFinicity(start_meaning="page_number")
    source = make_source(server)
    await source.sweep(Sink())
    server.start_meaning, server.starts = "record_index", []
    sink = Sink()
    assert (await source.sweep(sink)).complete
    assert len(sink.records) == 6


async def test_a_server_that_always_says_more_available_still_terminates():
    server = many_customers(5)
    server.always_more, server.report_found = True, False
    sink = Sink()
    report = await make_source(server).sweep(sink)
    assert len(sink.records) == 5 and report.units_total == 5
    assert len(server.starts) <= 6


async def test_a_server_that_ignores_start_and_always_says_more_terminates():
    server = many_customers(5)
    server.always_more, server.report_found, server.ignore_start = True, False, True
    report = await make_source(server).sweep(Sink())
    assert report.units_total == 2
    assert len(server.starts) == 3


async def test_paging_stops_once_found_customers_are_read_even_if_more_is_announced():
    server = many_customers(4)
    server.always_more = True
    await make_source(server).sweep(Sink())
    assert server.starts == [1, 3]


async def test_customer_type_all_sends_no_type_filter():
    server = FakeFinicity()
    await make_source(server, customer_type="all").sweep(Sink())
    assert all("type" not in r.url.params for r in server.log if r.url.path == "/aggregation/v1/customers")


# ---------------------------------------------------------------------------- tokens


async def test_one_token_is_reused_for_the_whole_sweep_and_sent_with_the_app_key():
    server = FakeFinicity()
    await make_source(server).sweep(Sink())
    assert server.tokens_issued == 1
    for request in server.log[1:]:
        assert request.headers["Finicity-App-Token"] == "token-1"
        assert request.headers["Finicity-App-Key"] == APP_KEY


async def test_the_token_is_renewed_once_it_is_older_than_90_minutes():
    server, time = FakeFinicity(), FakeTime()
    source = make_source(server, time=time)
    await source.sweep(Sink())
    time.now += 60 * 60
    await source.sweep(Sink())
    assert server.tokens_issued == 1
    time.now += 31 * 60
    await source.sweep(Sink())
    assert server.tokens_issued == 2


async def test_concurrent_requests_share_a_single_token_request():
    server = many_customers(30)
    await make_source(server, page_size=100, http={"max_concurrency": 16}).sweep(Sink())
    assert server.tokens_issued == 1


async def test_an_expired_token_401_renews_exactly_once_and_retries_the_request_once():
    server, observer = many_customers(1), Recorder()
    source = make_source(server, observer=observer)
    await source.sweep(Sink())
    server.rejected_tokens.add("token-1")
    server.log.clear()
    sink = Sink()
    report = await source.sweep(sink)
    assert report.complete and len(sink.records) == 1
    assert [(r.method, r.url.path, r.headers.get("Finicity-App-Token")) for r in server.log] == [
        ("GET", "/aggregation/v1/customers", "token-1"),  # 401 10023
        ("POST", "/aggregation/v2/partners/authentication", None),
        ("GET", "/aggregation/v1/customers", "token-2"),
        ("GET", "/aggregation/v1/customers/1000/accounts", "token-2"),
    ]
    assert observer.retries == ["token_expired"]


async def test_a_token_refused_again_after_renewal_is_not_renewed_a_second_time():
    server = many_customers(1)
    server.rejected_tokens = {"token-1", "token-2", "token-3"}
    with pytest.raises(SweepFailed):
        await make_source(server).sweep(Sink())
    assert server.tokens_issued == 2
    assert len(server.calls("/aggregation/v1/customers")) == 2


async def test_a_401_from_the_authentication_call_stops_the_source_for_good():
    server, observer = FakeFinicity(), Recorder()
    server.auth_status = 401
    source = make_source(server, observer=observer)
    with pytest.raises(AuthLockoutRisk):
        await source.sweep(Sink())
    assert observer.auth_failures == ["finicity-test"]
    server.auth_status = 200
    with pytest.raises(AuthLockoutRisk):
        await source.sweep(Sink())
    assert len(server.log) == 1  # the refused login only: no second auth call, nothing else


async def test_a_token_renewal_refused_mid_sweep_aborts_the_sweep_and_stops_the_source():
    server, observer = many_customers(3), Recorder()
    source = make_source(server, observer=observer)
    await source.sweep(Sink())
    server.rejected_tokens.add("token-1")
    server.auth_status = 401
    with pytest.raises(AuthLockoutRisk):
        await source.sweep(Sink())
    assert source.stopped and observer.auth_failures == ["finicity-test"]
    assert len(server.calls("/aggregation/v2/partners/authentication", "POST")) == 2


# ---------------------------------------------------------------------------- failures


async def test_a_customer_whose_accounts_fail_after_retries_makes_the_sweep_partial():
    server, time = many_customers(3), FakeTime()
    server.failing_customers.add("1001")
    sink = Sink()
    report = await make_source(server, time=time).sweep(sink)
    assert not report.complete and report.units_failed == 1 and report.units_total == 3
    assert sorted(sink.by_key()) == ["51000", "51002"]
    assert len(server.calls("/aggregation/v1/customers/1001/accounts")) == 3  # 1 + max_retries
    assert time.sleeps == [0.25, 0.5]


async def test_a_customer_list_failure_raises_sweep_failed():
    server = FakeFinicity()
    server.customers_status = 500
    with pytest.raises(SweepFailed) as caught:
        await make_source(server).sweep(Sink())
    assert not isinstance(caught.value, AuthLockoutRisk)


async def test_a_customer_deleted_between_list_and_accounts_call_has_no_accounts():
    server = many_customers(2)
    del server.accounts["1001"]
    report = await make_source(server).sweep(Sink())
    assert report.complete and report.records == 1


# ---------------------------------------------------------------------------- institutions


async def test_institution_names_fall_back_to_the_id_when_the_institution_is_unknown():
    server = many_customers(1, institution="999999")
    server.institutions.clear()
    sink = Sink()
    await make_source(server).sweep(sink)
    assert sink.records[0].institution == "999999"


async def test_institution_lookups_are_cached_single_flight_and_refreshed_after_the_ttl():
    server, time = many_customers(20), FakeTime()
    source = make_source(server, time=time, page_size=100, institution_cache_ttl="1h",
                         http={"max_concurrency": 8})
    await source.sweep(Sink())
    await source.sweep(Sink())
    assert len(server.calls("/institution/")) == 1
    time.now += 3601
    await source.sweep(Sink())
    assert len(server.calls("/institution/")) == 2


async def test_an_institution_lookup_reads_the_declared_status_and_home_page():
    server = FakeFinicity()
    found = await make_source(server).institution("4222")
    assert found is not None and found.home_url == "https://www.example-bank.com"
    assert found.declared is not None and found.declared.status is not None
    assert await make_source(server).institution("999999") is None
    assert await make_source(server).institution("not-a-number") is None


async def test_a_malformed_institution_body_is_counted_and_declares_nothing():
    server, observer = many_customers(1), Recorder()
    server.institutions = {"1": {"institution": "gone", "status": "online"},
                           "2": {"institution": {"status": 7}}}
    source = make_source(server, observer=observer)
    gone, bad = await source.institution("1"), await source.institution("2")
    assert gone is not None and bad is not None
    assert (gone.declared, bad.declared, gone.home_url) == (None, None, None)
    assert sorted(observer.invalid) == ["invalid_declared_status", "malformed_institution"]
    assert observer.drift == []


# ---------------------------------------------------------------------------- politeness


async def test_a_sweep_costs_the_minimum_number_of_requests():
    server = FakeFinicity()
    source = make_source(server)
    await source.sweep(Sink())
    # 1 token + 3 customer pages + 5 accounts calls + 3 distinct institutions
    assert len(server.log) == 1 + 3 + 5 + 3
    server.log.clear()
    await source.sweep(Sink())
    assert len(server.log) == 3 + 5  # warm token and institution cache


async def test_requests_are_reported_under_their_route_templates():
    observer = Recorder()
    await make_source(FakeFinicity(), observer=observer).sweep(Sink())
    assert {endpoint for endpoint, _ in observer.requests} == {
        "/aggregation/v2/partners/authentication",
        "/aggregation/v1/customers",
        "/aggregation/v1/customers/{customerId}/accounts",
        "/institution/v2/institutions/{institutionId}",
    }
    assert {status for _, status in observer.requests} == {"200"}


async def test_simple_accounts_reads_the_lighter_endpoint():
    server, observer = FakeFinicity(), Recorder()
    await make_source(server, observer=observer, simple_accounts=True).sweep(Sink())
    assert len(server.calls("/aggregation/v1/customers/")) == 5
    assert all(r.url.path.endswith("/accounts/simple") for r in server.calls("/aggregation/v1/customers/"))
    assert ("/aggregation/v1/customers/{customerId}/accounts/simple", "200") in observer.requests


async def test_records_reach_the_sink_in_chunks_with_progress():
    server = many_customers(120)
    sink = Sink()
    await make_source(server, page_size=1000).sweep(sink)
    assert len(sink.chunks) >= 3 and len(sink.records) == 120
    assert sink.progress_calls[0] == (0, 120) and sink.progress_calls[-1] == (120, 120)
    assert [d for d, _ in sink.progress_calls] == sorted(d for d, _ in sink.progress_calls)


async def test_shards_split_customers_stably_and_disjointly():
    server = many_customers(40)
    keys = []
    for index in range(2):
        for _ in range(2):  # same shard twice: same customers
            sink = Sink()
            await make_source(server, page_size=100, shard={"index": index, "count": 2}).sweep(sink)
            keys.append(set(sink.by_key()))
    assert keys[0] == keys[1] and keys[2] == keys[3]
    assert not keys[0] & keys[2] and len(keys[0] | keys[2]) == 40 and keys[0] and keys[2]


async def test_secrets_and_tokens_are_never_logged(caplog):
    caplog.set_level(logging.DEBUG)
    server = many_customers(2)
    server.failing_customers.add("1001")
    source = make_source(server)
    await source.sweep(Sink())
    server.auth_status, server.rejected_tokens = 401, {"token-1"}
    with pytest.raises(AuthLockoutRisk):
        await source.sweep(Sink())
    text = caplog.text
    assert APP_KEY not in text and PARTNER_SECRET not in text and "token-1" not in text
    info = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    assert "1001" not in info and "51000" not in info


async def test_build_source_dispatches_on_the_provider():
    server = FakeFinicity()
    source = build_source(make_config(), Recorder(), clock=lambda: NOW, transport=server.transport())
    assert isinstance(source, FinicitySource) and source.provider == "finicity"
    await source.aclose()


# ---------------------------------------------------------------------------- one customer


async def test_refresh_owner_rereads_one_customer_with_the_sweeps_token():
    server = many_customers(3)
    source = make_source(server)
    await source.sweep(Sink())
    server.accounts["1001"][0]["aggregationStatusCode"] = 185
    server.log.clear()
    records = await source.refresh_owner("1001")
    assert [(r.account_key, r.code, r.owner_id) for r in records] == [("51001", "185", "1001")]
    assert [(r.method, r.url.path) for r in server.log] == [("GET", "/aggregation/v1/customers/1001/accounts")]
    assert server.tokens_issued == 1


async def test_refresh_owner_of_a_customer_that_is_gone_is_empty():
    server = many_customers(1)
    assert await make_source(server).refresh_owner("4040") == []


async def test_refresh_owner_waits_out_a_429_as_long_as_retry_after_says():
    server, time, observer = many_customers(1), FakeTime(), Recorder()
    server.throttle_once = "/aggregation/v1/customers/1000/accounts"
    records = await make_source(server, time=time, observer=observer).refresh_owner("1000")
    assert len(records) == 1 and time.sleeps == [3.0] and observer.retries == ["rate_limited"]


async def test_refresh_owner_raises_sweep_failed_when_the_credentials_are_refused():
    server = many_customers(1)
    server.auth_status = 401
    with pytest.raises(SweepFailed):
        await make_source(server).refresh_owner("1000")


async def test_owns_agrees_with_the_customers_a_sharded_sweep_reads():
    server = many_customers(20)
    source = make_source(server, page_size=100, shard={"index": 1, "count": 2})
    await source.sweep(Sink())
    read = {r.url.path.split("/")[4] for r in server.calls("/aggregation/v1/customers/")}
    assert read == {c["id"] for c in server.customers if source.owns(c["id"])} and 0 < len(read) < 20


async def test_fix_link_posts_the_partner_customer_and_login_with_the_configured_redirect():
    server, observer = many_customers(1), Recorder()
    source = make_source(server, observer=observer, fix_redirect_uri="https://app.example/fixed",
                         fix_webhook="https://hooks.example/connect")
    link = await source.fix_link("1000", "1007302745")
    assert link == "https://connect2.finicity.com?signature=s3cr3t"
    request = server.calls("/connect/v2/generate/fix", "POST")[0]
    assert json.loads(request.content) == {
        "partnerId": "1234583871234", "customerId": "1000", "institutionLoginId": "1007302745",
        "redirectUri": "https://app.example/fixed", "webhook": "https://hooks.example/connect"}
    assert request.headers["Finicity-App-Token"] == "token-1"
    assert ("/connect/v2/generate/fix", "200") in observer.requests


async def test_fix_link_sends_only_the_required_fields_without_fix_settings():
    server = many_customers(1)
    await make_source(server).fix_link("1000", "1007302745")
    body = json.loads(server.calls("/connect/v2/generate/fix", "POST")[0].content)
    assert sorted(body) == ["customerId", "institutionLoginId", "partnerId"]


async def test_fix_link_renews_an_expired_token_once_and_reuses_it():
    server = many_customers(1)
    source = make_source(server)
    await source.sweep(Sink())
    server.rejected_tokens.add("token-1")
    await source.fix_link("1000", "1007302745")
    await source.fix_link("1000", "1007302745")
    assert server.tokens_issued == 2
    assert [r.headers["Finicity-App-Token"] for r in server.calls("/connect/v2/generate/fix", "POST")] == [
        "token-1", "token-2", "token-2"]


async def test_a_refused_fix_link_raises_an_upstream_error_with_the_code():
    server = many_customers(1)
    server.fix_status = 400
    with pytest.raises(UpstreamStatusError) as caught:
        await make_source(server).fix_link("9999", "1")
    assert caught.value.code == 10010 and "9999" not in str(caught.value)


async def test_institution_names_reach_records_label_safe():
    server = many_customers(1)
    server.institutions["4222"] = {"institution": {"id": 4222, "displayName": " Chase\nBank\x00 "}}
    sink = Sink()
    await make_source(server).sweep(sink)
    assert sink.records[0].institution == "Chase Bank"
