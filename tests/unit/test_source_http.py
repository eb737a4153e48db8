"""The shared upstream client: retries, backoff, Retry-After, rate limit, reporting, sharding."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from exporter.config import HttpConfig, ShardConfig
from exporter.sources.client import UpstreamClient
from exporter.sources.errors import MalformedResponse, UpstreamStatusError, UpstreamUnavailable
from exporter.sources.sharding import in_shard
from exporter.sources.sweep import TtlCache
from tests.unit.support import NOW, FakeTime, Recorder

ROUTE = "/aggregation/v1/customers/{customerId}/accounts"

def scripted(*answers):
    """A MockTransport handler answering in order; an exception instance is raised instead."""
    queue = list(answers)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    handler.seen = seen  # type: ignore[attr-defined]
    return handler


def make_client(handler, *, time: FakeTime | None = None, observer: Recorder | None = None,
                random=lambda: 1.0, is_outcome_code=lambda code: False,
                base_url="https://api.example.test", **http) -> UpstreamClient:
    time = time or FakeTime()
    return UpstreamClient(
        source="finicity-test",
        base_url=base_url,
        http=HttpConfig(**{"max_retries": 3, "backoff_base": 0.5, "backoff_max": 30.0, **http}),
        observer=observer or Recorder(),
        transport=httpx.MockTransport(handler),
        clock=time, monotonic=time, sleep=time.sleep, random=random,
        is_outcome_code=is_outcome_code,
    )


def ok(body=None) -> httpx.Response:
    return httpx.Response(200, json=body if body is not None else {"accounts": []})


async def test_429_with_retry_after_seconds_sleeps_that_long_then_succeeds():
    time, observer = FakeTime(), Recorder()
    handler = scripted(httpx.Response(429, headers={"Retry-After": "7"}), ok())
    client = make_client(handler, time=time, observer=observer)
    assert await client.get_json(ROUTE, {"customerId": "1"}) == {"accounts": []}
    assert time.sleeps == [7.0]
    assert observer.retries == ["rate_limited"]


async def test_429_with_retry_after_as_http_date_sleeps_until_that_date():
    time = FakeTime()
    when = format_datetime(datetime.fromtimestamp(NOW + 12, UTC), usegmt=True)
    client = make_client(scripted(httpx.Response(429, headers={"Retry-After": when}), ok()), time=time)
    await client.get_json(ROUTE, {"customerId": "1"})
    assert time.sleeps == [12.0]


async def test_retry_after_is_capped_by_backoff_max():
    time = FakeTime()
    handler = scripted(httpx.Response(503, headers={"Retry-After": "3600"}), ok())
    await make_client(handler, time=time, backoff_max=20.0).get_json(ROUTE, {"customerId": "1"})
    assert time.sleeps == [20.0]


async def test_server_errors_are_retried_with_full_jitter_then_succeed():
    time, observer = FakeTime(), Recorder()
    handler = scripted(httpx.Response(502), httpx.Response(503), ok())
    client = make_client(handler, time=time, observer=observer, random=lambda: 0.5)
    assert await client.get_json(ROUTE, {"customerId": "1"}) == {"accounts": []}
    assert time.sleeps == [0.25, 0.5]  # 0.5 × uniform draw of [0, 0.5] and [0, 1.0]
    assert observer.retries == ["server_error", "server_error"]


async def test_backoff_grows_exponentially_up_to_backoff_max():
    time = FakeTime()
    client = make_client(scripted(httpx.Response(500)), time=time, max_retries=6,
                         backoff_base=1.0, backoff_max=10.0)
    with pytest.raises(UpstreamStatusError):
        await client.get_json(ROUTE, {"customerId": "1"})
    assert time.sleeps == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


async def test_exhausted_retries_raise_the_last_status_after_max_retries_plus_one_attempts():
    handler = scripted(httpx.Response(500, json={"code": 9999, "message": "oops"}))
    client = make_client(handler, max_retries=2)
    with pytest.raises(UpstreamStatusError) as caught:
        await client.get_json(ROUTE, {"customerId": "1"})
    assert caught.value.http_status == 500 and caught.value.code == 9999
    assert len(handler.seen) == 3


async def test_timeouts_are_retried_and_reported_as_timeout():
    observer = Recorder()
    handler = scripted(httpx.ReadTimeout("slow"), ok())
    await make_client(handler, observer=observer).get_json(ROUTE, {"customerId": "1"})
    assert observer.requests == [(ROUTE, "timeout"), (ROUTE, "200")]
    assert observer.retries == ["timeout"]


async def test_connect_errors_exhausting_retries_raise_unavailable_reported_as_connect_error():
    observer = Recorder()
    client = make_client(scripted(httpx.ConnectError("refused")), observer=observer, max_retries=1)
    with pytest.raises(UpstreamUnavailable):
        await client.get_json(ROUTE, {"customerId": "1"})
    assert observer.requests == [(ROUTE, "connect_error")] * 2
    assert observer.retries == ["connect_error"]


async def test_http_500_carrying_a_known_aggregation_code_is_not_retried():
    handler = scripted(httpx.Response(500, json={"code": 185, "status": "500", "message": "MFA Required"}))
    client = make_client(handler, is_outcome_code=lambda code: code == 185)
    with pytest.raises(UpstreamStatusError) as caught:
        await client.get_json(ROUTE, {"customerId": "1"})
    assert caught.value.code == 185
    assert len(handler.seen) == 1


async def test_client_errors_are_not_retried():
    handler = scripted(httpx.Response(404, json={"code": 14001, "message": "Customer not found"}))
    with pytest.raises(UpstreamStatusError):
        await make_client(handler).get_json(ROUTE, {"customerId": "1"})
    assert len(handler.seen) == 1


@pytest.mark.parametrize("raw", [10023, "10023", "10023,", " 10023 "])
async def test_finicity_error_codes_are_parsed_from_numbers_and_strings(raw):
    body = {"code": raw, "message": "Expired (Finicity-App-Token)"}
    with pytest.raises(UpstreamStatusError) as caught:
        await make_client(scripted(httpx.Response(401, json=body))).get_json(ROUTE, {"customerId": "1"})
    assert caught.value.code == 10023


async def test_a_malformed_json_body_is_counted_and_raised_clearly():
    observer = Recorder()
    handler = scripted(httpx.Response(200, content=b'{"accounts": [', headers={"Content-Type": "application/json"}))
    with pytest.raises(MalformedResponse, match="not JSON"):
        await make_client(handler, observer=observer).get_json(ROUTE, {"customerId": "1"})
    assert observer.invalid == ["malformed_json"]


async def test_the_route_template_is_reported_never_the_filled_in_path():
    observer = Recorder()
    handler = scripted(ok())
    await make_client(handler, observer=observer).get_json(ROUTE, {"customerId": "10/05"})
    assert observer.requests == [(ROUTE, "200")]
    assert handler.seen[0].url.raw_path == b"/aggregation/v1/customers/10%2F05/accounts"


async def test_a_base_url_path_prefix_is_kept_in_front_of_the_route():
    handler = scripted(ok())
    client = make_client(handler, base_url="http://127.0.0.1:8080/finicity")
    await client.get_json(ROUTE, {"customerId": "7"}, params={"status": None, "limit": 5})
    assert str(handler.seen[0].url) == "http://127.0.0.1:8080/finicity/aggregation/v1/customers/7/accounts?limit=5"


async def test_the_rate_limit_spaces_requests_beyond_the_burst():
    time = FakeTime()
    client = make_client(scripted(ok()), time=time, rate_limit_per_second=2.0, rate_limit_burst=1)
    for _ in range(3):
        await client.get_json(ROUTE, {"customerId": "1"})
    assert time.sleeps == [pytest.approx(0.5), pytest.approx(0.5)]


async def test_concurrent_requests_are_bounded_by_max_concurrency():
    in_flight, peak = 0, 0

    async def handler(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        for _ in range(5):
            await asyncio.sleep(0)
        in_flight -= 1
        return ok()

    client = make_client(handler, max_concurrency=2)
    await asyncio.gather(*(client.get_json(ROUTE, {"customerId": str(i)}) for i in range(10)))
    assert peak == 2


async def test_an_empty_success_body_decodes_to_none():
    assert await make_client(scripted(httpx.Response(204))).get_json(ROUTE, {"customerId": "1"}) is None


def test_shard_assignment_is_stable_and_every_id_lands_in_exactly_one_shard():
    ids = [str(1005061234 + i) for i in range(600)]
    shards = [ShardConfig(index=i, count=3) for i in range(3)]
    owners = [[s.index for s in shards if in_shard(unit, s)] for unit in ids]
    assert all(len(o) == 1 for o in owners)
    assert all(120 < sum(o == [i] for o in owners) < 280 for i in range(3))
    # pinned: the split must not change between processes or releases (blake2b, not hash())
    assert [o[0] for o in owners[:8]] == [1, 1, 0, 1, 2, 0, 0, 1]


async def test_the_cache_loads_once_for_concurrent_callers_and_again_after_its_ttl():
    time, calls = FakeTime(), []

    async def load(key):
        calls.append(key)
        await asyncio.sleep(0)
        return f"name-{key}", 60.0

    cache = TtlCache(load, time)
    assert await asyncio.gather(*(cache.get("4222") for _ in range(5))) == ["name-4222"] * 5
    assert calls == ["4222"]
    time.now += 61
    await cache.get("4222")
    assert calls == ["4222", "4222"]


def test_urls_built_without_parsing_equal_the_ones_httpx_parses():
    client = make_client(scripted(ok()), base_url="http://127.0.0.1:8080/finicity")
    assert client._fast_urls  # the pinned httpx keeps the internals the fast path relies on
    args = (ROUTE, {"customerId": "10/05 é"}, {"start": 1, "type": None, "q": "a b&c"})
    target = client._url(*args)
    fast = client._absolute(target)
    client._fast_urls = False
    parsed = client._absolute(target)
    assert fast == parsed and str(fast) == str(httpx.URL(str(parsed)))
    assert str(fast) == ("http://127.0.0.1:8080/finicity/aggregation/v1/customers/"
                         "10%2F05%20%C3%A9/accounts?start=1&q=a+b%26c")


def test_the_proxy_comes_from_the_environment_unless_no_proxy_names_the_host(monkeypatch):
    from exporter.sources.client import env_proxy

    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "int-api.mx.com")
    assert env_proxy("https://api.finicity.com") == "http://proxy.internal:3128"
    assert env_proxy("https://int-api.mx.com") is None
    assert env_proxy("http://127.0.0.1:8080/finicity") is None  # no HTTP_PROXY set
