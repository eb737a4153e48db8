"""Both listeners against hostile clients, with the real agent over real sockets.

Malformed signatures, ``Authorization`` headers and fix tokens are a counted 401/400 (never a
500, nothing persisted); header blocks are bounded in size (431) and in time (closed after
``read_header_timeout``) while other clients keep being served; a flood of invalid fix
tokens leaves genuine links redirecting; a wrong method is 405 with ``Allow``; a fuzzed
request line, headers and tokens never get a 500; and a debug-level log of push and the
repair loop carries none of the ids it handled.
"""

from __future__ import annotations

import re
import select
import socket
import threading
import time
from collections import Counter

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.remediation.signing import make_token
from tests.integration.listeners_support import (
    FIN,
    HEADER_TIMEOUT,
    MX,
    SOURCES,
    Rig,
    assert_no_traceback,
    connect_event,
    header,
    raw_request,
    rss_bytes,
    signature,
    slow_header_clients,
    status,
)
from tests.integration.procs import served_owners, wait_for
from tests.integration.test_repair_loop import SECRET

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    rig = Rig(tmp_path_factory.mktemp("listeners"))
    try:
        rig.agent.wait_sweeps({name: 1 for name in SOURCES})
        yield rig
    finally:
        rig.stop()


@pytest.fixture(scope="module")
def links(rig) -> list[dict]:
    """Genuine fix links: a night of breakage, delivered to the receiver."""
    rig.agent.next_sweeps(SOURCES)
    rig.sandbox.advance(1)
    rig.agent.next_sweeps(SOURCES)
    wait_for(lambda: len(rig.fix_links()) >= 2, 60, "fix requests with links")
    return rig.fix_links()


def ports(rig) -> dict[str, int]:
    return {"metrics": rig.agent.port, "webhooks": rig.hooks_port}


def refusals(rig, reason: str) -> dict[str, float]:
    """listener → ``openfinance_listener_refusals_total`` for ``reason``, as /metrics says."""
    return {name: rig.agent.value("openfinance_listener_refusals_total", listener=name,
                                  reason=reason) for name in ports(rig)}


def test_malformed_signature_authorization_and_tokens_are_a_counted_no(rig):
    agent = rig.agent
    rows = rig.inbox_rows()
    bad_sig = agent.value("openfinance_webhook_events_total", source=FIN, result="bad_signature")
    unauthorized = agent.value("openfinance_webhook_events_total", source=MX,
                               result="unauthorized")
    invalid = agent.value("openfinance_fix_clicks_total", result="invalid")
    body = connect_event("1005000001", "hostile-1")
    for sig in ("é".encode() * 32, "é".encode("latin-1") * 64, b"\xff" * 64, b"g" * 64):
        answer = raw_request(rig.hooks_port, b"POST /webhooks/finicity-sandbox HTTP/1.1\r\n"
                             b"Host: x\r\nContent-Type: application/json\r\n"
                             b"X-Finicity-Signature: " + sig + b"\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                             b"Connection: close\r\n\r\n" + body)
        assert status(answer) == 401, answer
    for auth in ("é".encode() * 8, b"\xff\xfe", "Zm9vOmJhcg==é".encode(), b"!!!!"):
        answer = raw_request(rig.hooks_port, b"POST /webhooks/mx-sandbox HTTP/1.1\r\nHost: x\r\n"
                             b"Authorization: Basic " + auth + b"\r\nContent-Length: 2\r\n"
                             b"Connection: close\r\n\r\n{}")
        assert status(answer) == 401, answer
    for path in (b"/webhooks/finicity-sandbox/txpush/%C3%A9", b"/webhooks/x/txpush/\xc3\xa9"):
        answer = raw_request(rig.hooks_port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                             b"Connection: close\r\n\r\n")
        assert status(answer) in (400, 404), answer
    # A token with a genuine MAC (so it needs the secret) and an episode id past SQLite's range.
    for token in (make_token(SECRET.encode(), 2**63, time.time() + 3600),
                  make_token(SECRET.encode(), 2**64 - 1, time.time() + 3600),
                  "%C3%A9.%C3%A9", "A" * 22 + "." + "é" * 22, "AAAA.AAAA"):
        answer = httpx.get(f"{rig.hooks}/fix/{token}")
        assert answer.status_code == 400 and "not valid" in answer.text, (token, answer.text)

    assert agent.value("openfinance_webhook_events_total", source=FIN,
                       result="bad_signature") == bad_sig + 4
    assert agent.value("openfinance_webhook_events_total", source=MX,
                       result="unauthorized") == unauthorized + 4
    assert agent.value("openfinance_fix_clicks_total", result="invalid") == invalid + 5
    assert rig.inbox_rows() == rows, "nothing refused may be persisted"
    assert agent.value("openfinance_push_refresh_duration_seconds_count") == 0, "nor re-read"
    assert_no_traceback(agent.log())


def test_header_blocks_are_bounded_in_size_on_both_listeners(rig):
    big = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    many = b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: %s\r\n" % (i, b"b" * 100) for i in range(1000)) + b"\r\n"
    too_large = refusals(rig, "header_too_large")
    for name, port in ports(rig).items():
        for request in (big, many):
            answer = raw_request(port, request)
            assert status(answer) == 431, (name, answer[:200])
        # a header block just under the cap is served as usual
        fine = raw_request(port, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-Ok: "
                           + b"c" * 60_000 + b"\r\nConnection: close\r\n\r\n")
        assert status(fine) in (200, 404), (name, fine[:200])

    # Unterminated multi-megabyte headers: each is cut off at the cap, memory stays bounded.
    pid = rig.agent.popen.pid
    before = rss_bytes(pid)
    refused = Counter()

    def endless(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            sent = 0
            try:
                while sent < 8_000_000:
                    s.sendall(b"z" * 65536)
                    sent += 65536
            except OSError:
                pass
            try:
                answer = s.recv(4096)
            except OSError:
                answer = b""
            refused[(port, sent < 8_000_000, status(answer))] += 1

    threads = [threading.Thread(target=endless, args=(port,))
               for port in ports(rig).values() for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    grew = rss_bytes(pid) - before
    print(f"resident memory after 10 unterminated 8 MB headers: +{grew / 1e6:.1f} MB")
    assert sum(refused.values()) == 10
    assert all(cut for (_port, cut, _status) in refused), refused
    assert grew < 30e6, f"grew {grew / 1e6:.0f} MB"
    # each listener counted its 2 oversized and 5 endless header blocks, once each
    assert refusals(rig, "header_too_large") == {name: n + 7 for name, n in too_large.items()}
    assert_no_traceback(rig.agent.log())


def test_slow_header_clients_are_cut_off_while_others_are_served(rig):
    """150 clients per listener each send one header byte every half second; each is closed
    once ``read_header_timeout`` passes, while signed webhooks and scrapes are answered."""
    timeouts = refusals(rig, "header_timeout")
    clients = slow_header_clients(ports(rig).values(), 150)
    opened = time.monotonic()
    closed_at: dict[int, float] = {}
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set() and len(closed_at) < len(clients):
            for i, s in enumerate(clients):
                if i in closed_at:
                    continue
                try:
                    s.send(b"a")
                except OSError:
                    closed_at[i] = time.monotonic() - opened
            readable, _, _ = select.select([s for i, s in enumerate(clients)
                                            if i not in closed_at], [], [], 0.5)
            for s in readable:
                i = clients.index(s)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data or data.startswith(b"HTTP/1.1 408"):
                    closed_at[i] = time.monotonic() - opened

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        answered = Counter()
        owners = list(served_owners(rig.config, FIN))[:5]
        n = 0
        while time.monotonic() - opened < HEADER_TIMEOUT + 1:
            body = connect_event(owners[n % len(owners)], f"slow-{n}")
            hook = httpx.post(f"{rig.hooks}/webhooks/{FIN}", content=body, timeout=5,
                              headers={"X-Finicity-Signature": signature(body)})
            scrape = httpx.get(f"{rig.agent.url}/metrics", timeout=5)
            answered[(hook.status_code, scrape.status_code)] += 1
            n += 1
        wait_for(lambda: len(closed_at) == len(clients), HEADER_TIMEOUT + 8,
                 "every slow client closed")
    finally:
        stop.set()
        thread.join(10)
        for s in clients:
            s.close()
    assert set(answered) == {(200, 200)}, answered
    times = sorted(closed_at.values())
    print(f"{len(clients)} slow-header clients closed after {times[0]:.1f}–{times[-1]:.1f}s "
          f"(read_header_timeout {HEADER_TIMEOUT:g}s); {sum(answered.values())} webhooks and "
          f"scrapes answered meanwhile")
    assert times[0] >= HEADER_TIMEOUT - 0.5, "none is cut off before its time"
    assert refusals(rig, "header_timeout") == {name: n + 150 for name, n in timeouts.items()}
    assert_no_traceback(rig.agent.log())


def test_a_flood_of_invalid_tokens_leaves_genuine_links_redirecting(rig, links):
    stop = threading.Event()
    flood = Counter()

    def garbage() -> None:
        with httpx.Client(base_url=rig.hooks, timeout=10) as client:
            while not stop.is_set():
                flood[client.get("/fix/AAAA.AAAA").status_code] += 1

    threads = [threading.Thread(target=garbage) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: flood[429] > 0, 30, "the invalid-token budget to run out")
        clicks = Counter()
        for link in links[:2]:
            for _ in range(3):
                clicks[httpx.get(link["link"], follow_redirects=False, timeout=10)
                       .status_code] += 1
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    print(f"flood answers {dict(flood)}; genuine clicks {dict(clicks)}")
    assert clicks == Counter({302: 6}), clicks
    assert set(flood) <= {400, 429}, flood
    assert_no_traceback(rig.agent.log())


def test_a_wrong_method_on_a_known_route_is_405_with_allow(rig, links):
    token = links[0]["link"].rsplit("/", 1)[1]
    cases = [
        (rig.agent.url, "POST", "/metrics", {"GET"}),
        (rig.agent.url, "DELETE", "/-/ready", {"GET"}),
        (rig.hooks, "GET", f"/webhooks/{FIN}", {"POST"}),
        (rig.hooks, "PUT", f"/webhooks/{FIN}/txpush/whatever", {"GET", "POST"}),
        (rig.hooks, "POST", f"/fix/{token}", {"GET"}),
    ]
    for base, method, path, allowed in cases:
        answer = httpx.request(method, base + path, timeout=10)
        assert answer.status_code == 405, (method, path, answer.status_code)
        allow = {m.strip() for m in answer.headers["allow"].split(",")}
        assert allowed <= allow, (method, path, allow)


_TOKEN_CHARS = st.sampled_from([*list("AZaz09-_.%/"), "é", "\x00", "ÿ", " "])
_HEADER_BYTES = st.binary(min_size=0, max_size=200)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(listener=st.sampled_from(["metrics", "webhooks"]),
       method=st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"G\xc3\xa9T"]),
       path=st.sampled_from([b"/metrics", b"/-/ready", b"/webhooks/finicity-sandbox",
                             b"/webhooks/mx-sandbox", b"/webhooks/finicity-sandbox/txpush/",
                             b"/fix/", b"/"]),
       token=st.text(_TOKEN_CHARS, max_size=60),
       name=st.sampled_from([b"Authorization", b"X-Finicity-Signature", b"Content-Length",
                             b"Transfer-Encoding", b"Accept", b"Accept-Encoding", b"Host",
                             b"X-\xff"]),
       value=_HEADER_BYTES,
       scheme=st.sampled_from([b"", b"Basic ", b"Bearer "]))
def test_fuzzed_request_lines_headers_and_tokens_never_get_a_500(
        rig, listener, method, path, token, name, value, scheme):
    port = ports(rig)[listener]
    target = path + token.encode("utf-8") if path.endswith(b"/") and path != b"/" else path
    request = (method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + name + b": " + scheme
               + value.replace(b"\r", b"").replace(b"\n", b"") + b"\r\nContent-Length: 2\r\n"
               b"Connection: close\r\n\r\n{}")
    answer = raw_request(port, request)
    assert status(answer) < 500 or (status(answer) == 503 and header(answer, b"retry-after")), (
        request, answer[:300])


def test_fuzzing_left_no_traceback_nor_a_line_per_bad_request(rig):
    log = rig.agent.log()
    assert_no_traceback(log)
    assert "Invalid HTTP request" not in log, "malformed requests must not flood the log"


def test_a_debug_log_of_push_and_the_repair_loop_carries_no_ids(rig, links):
    owners = list(served_owners(rig.config, FIN))[:8]
    for i, owner in enumerate(owners):
        body = connect_event(owner, f"ids-{i}")
        assert httpx.post(f"{rig.hooks}/webhooks/{FIN}", content=body, timeout=10, headers={
            "X-Finicity-Signature": signature(body)}).status_code == 200
    wait_for(lambda: rig.agent.value("openfinance_push_refresh_duration_seconds_count",
                                     source=FIN) >= len(owners), 30, "the re-reads")
    httpx.get(links[0]["link"], follow_redirects=False, timeout=10)
    ids = set(owners)
    for body in links:
        ids |= {body.get("customer_id"), body.get("user_guid"), body["login_id"]}
    ids.discard(None)
    log = rig.agent.log()
    assert "level=debug" in log and "push: source=" in log, "the run logs at debug level"
    found = sorted(i for i in ids if re.search(rf"(?<![\w-]){re.escape(str(i))}(?![\w-])", log))
    assert not found, f"ids in the log: {found[:5]}"
