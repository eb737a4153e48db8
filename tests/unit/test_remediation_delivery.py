"""Delivering fix requests: signature, idempotency, backoff, Retry-After, 410, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from exporter.remediation.delivery import backoff_delay, retry_after
from exporter.state.database import StateDatabase
from exporter.web.server import Server, http_server
from tests.unit.test_remediation_support import (
    DAY,
    HOUR,
    SECRET,
    T0,
    FakeSource,
    Receiver,
    Recorder,
    broke,
    build_loop,
    feed,
    finished,
)


def independent_verify(secret: str, raw: bytes, header: str, now: float) -> bool:
    """A receiver's check, written from the contract, not from exporter code."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    t = int(fields["t"])
    mac = hmac.new(secret.encode(), str(t).encode() + b"." + raw, hashlib.sha256).hexdigest()
    return abs(now - t) <= 300 and hmac.compare_digest(mac, fields["v1"])


async def one_request(tmp_path, clock, receiver, **kw):
    obs = kw.pop("observer", Recorder())
    loop = build_loop(tmp_path, clock, receiver, observer=obs, **kw)
    await finished(loop, "fin", True)
    await feed(loop, broke("103"))
    await loop.evaluate()
    return loop, obs


def state(loop):
    return loop.store.outbox_states()


async def test_a_request_is_signed_over_the_raw_body_with_its_id_as_idempotency_key(tmp_path, clock):
    loop, obs = await one_request(tmp_path, clock, receiver := Receiver(200))
    await loop.worker.run_once()
    (req,) = receiver.seen
    assert req.headers["content-type"] == "application/json"
    assert independent_verify(SECRET, req.content, req.headers["x-openfinance-signature"], T0)
    assert not independent_verify("other", req.content, req.headers["x-openfinance-signature"], T0)
    assert req.headers["idempotency-key"] == json.loads(req.content)["id"]
    assert obs.results("delivered") == 1 and state(loop) == {"delivered": 1}
    await loop.stop()


async def test_a_delivered_request_is_never_sent_again(tmp_path, clock):
    loop, _ = await one_request(tmp_path, clock, receiver := Receiver(204))
    await loop.worker.run_once()
    clock.advance(DAY)
    await loop.evaluate()
    await loop.worker.run_once()
    await loop.stop()
    again = build_loop(tmp_path, clock, receiver)
    await again.evaluate()
    await again.worker.run_once()
    assert len(receiver.seen) == 1
    await again.stop()


async def test_retries_keep_the_idempotency_key_across_a_restart(tmp_path, clock):
    loop, obs = await one_request(tmp_path, clock, receiver := Receiver(500))
    await loop.worker.run_once()
    await loop.stop()
    clock.advance(HOUR)
    receiver.answers = [200]
    again = build_loop(tmp_path, clock, receiver)
    await again.worker.run_once()
    keys = [r.headers["idempotency-key"] for r in receiver.seen]
    assert len(keys) == 2 and keys[0] == keys[1]
    assert obs.results("retried") == 1
    await again.stop()


def test_backoff_is_exponential_with_full_jitter_and_capped():
    top = [backoff_delay(n, 2.0, 60.0, lambda: 1.0) for n in range(1, 8)]
    assert top == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert backoff_delay(3, 2.0, 60.0, lambda: 0.25) == 2.0
    assert backoff_delay(3, 2.0, 60.0, lambda: 0.0) == 0.0


async def test_failures_are_retried_on_the_backoff_schedule(tmp_path, clock):
    loop, obs = await one_request(tmp_path, clock, receiver := Receiver(502), backoff_base=10)
    waits = []
    for _ in range(4):
        await loop.worker.run_once()
        due = await loop.call("next_due")
        waits.append(due - clock.now)
        clock.now = due
    assert waits == [10.0, 20.0, 40.0, 80.0]
    assert len(receiver.seen) == 4 and obs.results("retried") == 4
    await loop.stop()


async def test_nothing_is_sent_before_the_next_attempt_is_due(tmp_path, clock):
    loop, _ = await one_request(tmp_path, clock, receiver := Receiver(500), backoff_base=10)
    await loop.worker.run_once()
    clock.advance(9)
    await loop.worker.run_once()
    assert len(receiver.seen) == 1
    await loop.stop()


async def test_retry_after_seconds_on_429_is_honoured(tmp_path, clock):
    loop, _ = await one_request(
        tmp_path, clock, Receiver(httpx.Response(429, headers={"Retry-After": "120"}), 200))
    await loop.worker.run_once()
    assert await loop.call("next_due") == T0 + 120
    await loop.stop()


def test_retry_after_accepts_an_http_date_and_ignores_garbage():
    assert retry_after("Fri, 21 Nov 2025 04:45:00 GMT", T0) == 300.0
    assert retry_after("soon", T0) is None
    assert retry_after(None, T0) is None


async def test_410_stops_retries_for_that_request(tmp_path, clock):
    loop, obs = await one_request(tmp_path, clock, receiver := Receiver(410))
    await loop.worker.run_once()
    clock.advance(DAY)
    await loop.worker.run_once()
    assert len(receiver.seen) == 1 and state(loop) == {"failed": 1}
    assert obs.results("failed") == 1
    await loop.stop()


async def test_a_request_undelivered_after_retry_for_is_dead_lettered(tmp_path, clock):
    loop, obs = await one_request(tmp_path, clock, Receiver(503), retry_for=HOUR,
                                  backoff_base=600, backoff_max=600)
    for _ in range(10):
        await loop.worker.run_once()
        due = await loop.call("next_due")
        if due is None:
            break
        clock.now = due
    assert state(loop) == {"dead": 1}
    assert obs.results("dead") == 1 and obs.results("retried") == 6  # at 0, 10, …, 60 min
    await loop.stop()


async def test_a_network_error_is_retried(tmp_path, clock):
    loop, obs = await one_request(tmp_path, clock, Receiver(httpx.ConnectError("refused")))
    await loop.worker.run_once()
    assert obs.results("retried") == 1 and state(loop) == {"pending": 1}
    await loop.stop()


async def test_concurrency_is_bounded(tmp_path, clock):
    in_flight, peak = 0, 0

    async def slow(request):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        in_flight -= 1
        return httpx.Response(200)

    loop = build_loop(tmp_path, clock, slow, max_concurrency=3)
    await finished(loop, "fin", True)
    for i in range(20):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await loop.evaluate()
    assert await loop.worker.run_once() == 20
    assert peak == 3
    await loop.stop()


async def test_generate_asks_the_source_for_a_link_at_each_attempt(tmp_path, clock):
    source = FakeSource()
    loop, _ = await one_request(tmp_path, clock, receiver := Receiver(500, 200),
                                link="generate", source=source, backoff_base=1)
    await loop.worker.run_once()
    clock.advance(10)
    await loop.worker.run_once()
    links = [json.loads(r.content)["link"] for r in receiver.seen]
    assert links == ["https://connect.example/fix?n=1", "https://connect.example/fix?n=2"]
    assert source.calls == [("c1", "l1"), ("c1", "l1")]
    await loop.stop()


async def test_a_link_the_source_cannot_make_postpones_delivery(tmp_path, clock):
    loop, obs = await one_request(tmp_path, clock, receiver := Receiver(200), link="generate",
                                  source=FakeSource(fail=True))
    await loop.worker.run_once()
    assert receiver.seen == [] and obs.results("retried") == 1
    await loop.stop()


async def test_redirect_links_are_stable_across_retries(tmp_path, clock):
    loop, _ = await one_request(tmp_path, clock, receiver := Receiver(500, 200), link="redirect",
                                public_url="https://fix.partner.test/of", backoff_base=1)
    await loop.worker.run_once()
    clock.advance(10)
    await loop.worker.run_once()
    first, second = (json.loads(r.content) for r in receiver.seen)
    assert first["link"] == second["link"]
    assert first["link"].startswith("https://fix.partner.test/of/fix/")
    await loop.stop()


@contextlib.asynccontextmanager
async def real_receiver(path: str, handler):
    """A real local HTTP server (the agent's own quiet uvicorn) answering POST ``path``;
    yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server: Server = http_server(Starlette(routes=[Route(path, handler, methods=["POST"])]),
                                 f"127.0.0.1:{port}")
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def deliver_one(tmp_path, clock, endpoint: str | None = None, **kw):
    """A real RepairLoop (its own delivery pool) that creates one request and delivers it."""
    from exporter.remediation.loop import RepairLoop
    from tests.unit.test_remediation_support import config

    cfg = config(endpoint=endpoint) if endpoint else config()
    loop = RepairLoop(cfg, StateDatabase(tmp_path / "s.db"), sources={}, snapshot=lambda: None, clock=clock,
                      **kw)
    await finished(loop, "fin", True)
    await feed(loop, broke("103", at=clock.now))
    await loop.evaluate()
    await loop.worker.run_once()
    return loop


async def test_a_real_http_receiver_gets_one_verifiable_request(tmp_path, clock):
    got: list[tuple[bytes, dict]] = []

    async def receive(request: Request) -> Response:
        got.append((await request.body(), dict(request.headers)))
        return Response(status_code=202)

    clock.now = __import__("time").time()
    async with real_receiver("/hook", receive) as url:
        loop = await deliver_one(tmp_path, clock, f"{url}/hook")
        await loop.worker.run_once()
    await loop.stop()
    (raw, headers), = got
    assert independent_verify(SECRET, raw, headers["x-openfinance-signature"], clock.now)
    assert json.loads(raw)["login_id"] == "l1"
    assert headers["idempotency-key"] == json.loads(raw)["id"]


async def _paced(tmp_path, clock, receiver, requests: int, **kw):
    """A loop with ``requests`` due and a worker whose pauses are recorded, not slept."""
    loop = build_loop(tmp_path, clock, receiver, **kw)
    await finished(loop, "fin", True)
    for i in range(requests):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await loop.evaluate()
    pauses: list[float] = []
    now = [0.0]

    async def pause(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds
    loop.worker.sleep = pause
    loop.worker.monotonic = lambda: now[0]  # sending takes no time
    return loop, pauses


async def test_while_a_sweep_runs_deliveries_keep_to_the_configured_rate(tmp_path, clock):
    loop, pauses = await _paced(tmp_path, clock, receiver := Receiver(204), 5,
                                sweep_deliveries_per_second=4)
    loop.sweep_started("fin")
    assert await loop.worker.run_once() == 5
    assert pauses == [0.25] * 4  # one start every 1/4 s after the first
    assert len(receiver.seen) == 5
    await loop.stop()


async def test_a_sweep_that_begins_mid_batch_paces_the_rest_of_it(tmp_path, clock):
    loop, pauses = await _paced(tmp_path, clock, Receiver(204), 6, max_concurrency=1,
                                sweep_deliveries_per_second=2)
    sent = 0

    def pace():
        nonlocal sent
        sent += 1
        return 2.0 if sent > 3 else None  # the sweep starts after the first requests went
    loop.worker.pace = pace
    assert await loop.worker.run_once() == 6
    assert pauses and all(p == 0.5 for p in pauses)
    await loop.stop()


async def test_without_a_sweep_deliveries_are_not_paced(tmp_path, clock):
    loop, pauses = await _paced(tmp_path, clock, Receiver(204), 5, sweep_deliveries_per_second=4)
    loop.sweep_started("fin")
    loop.sweep_finished("fin", True)
    assert await loop.worker.run_once() == 5
    assert pauses == []
    await loop.stop()


async def test_at_rate_zero_nothing_is_sent_until_the_sweep_ends(tmp_path, clock):
    loop, _ = await _paced(tmp_path, clock, receiver := Receiver(204), 3,
                           sweep_deliveries_per_second=0)
    loop.sweep_started("mxs")
    assert await loop.worker.run_once() == 0 and receiver.seen == []
    loop.sweep_ended("mxs")  # cancelled
    assert await loop.worker.run_once() == 3
    await loop.stop()


async def test_a_real_receivers_retry_after_is_honoured_through_the_loops_own_pool(
        tmp_path, clock):
    async def busy(request: Request) -> Response:
        return Response(status_code=429, headers={"Retry-After": "120"})

    async with real_receiver("/hook", busy) as url:
        loop = await deliver_one(tmp_path, clock, f"{url}/hook?tenant=a")
    assert await loop.call("next_due") == clock.now + 120
    await loop.stop()


async def test_behind_an_http_proxy_deliveries_go_through_it(tmp_path, clock, monkeypatch):
    seen: list[tuple[str, str]] = []

    async def proxy(request: Request) -> Response:
        seen.append((request.headers["host"], request.url.path))
        return Response(status_code=204)

    async with real_receiver("/fix", proxy) as url:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", url)
        loop = await deliver_one(tmp_path, clock, observer=(obs := Recorder()))
    await loop.stop()
    assert seen == [("partner.test", "/fix")] and obs.results("delivered") == 1
