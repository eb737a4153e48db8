"""The sandbox as the partner's receiver of fix requests: its users repair a share of the
logins some nights later, through the request's link (redirects followed) or in the app."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import httpx
import pytest

from exporter.sandbox import FINICITY_PARTNER_ID
from exporter.sandbox.fleet import PERSISTENT
from exporter.sandbox.ids import connection_id, owner_id
from tests.unit.test_sandbox_connect import find
from tests.unit.test_sandbox_support import Sandbox

RECEIVER = "/sandbox/partner/fix-requests"
HOOK = "http://receiver.test/hook"


def fix_request(sb: Sandbox, provider: str, k: int, request_id: str, **extra) -> dict:
    sim = sb.runtime.fleet.sim(provider)
    owner_key = "customer_id" if provider == "finicity" else "user_guid"
    return {"id": request_id, "kind": "fix", "source": f"{provider}-sandbox",
            "provider": provider, owner_key: owner_id(sim, k),
            "login_id": connection_id(sim, k), "account_ids": [], **extra}


async def finicity_link(sb: Sandbox, k: int) -> str:
    sim = sb.runtime.fleet.finicity
    r = await sb.finicity_post("/connect/v2/generate/fix", await sb.token(), {
        "partnerId": FINICITY_PARTNER_ID, "customerId": owner_id(sim, k),
        "institutionLoginId": connection_id(sim, k)})
    return r.json()["link"]


async def test_users_follow_the_link_a_night_later_and_the_fix_sends_done():
    received: list[httpx.Request] = []
    sb = Sandbox({"users": {"fix_share": 1.0, "fix_after_nights": 1},
                  "webhooks": {"finicity_url": HOOK, "retry_seconds": 0}},
                 webhook_transport=httpx.MockTransport(
                     lambda r: received.append(r) or httpx.Response(200)))
    try:
        k = find(sb, "finicity", PERSISTENT)
        body = fix_request(sb, "finicity", k, "req-1", link=await finicity_link(sb, k))
        r = await sb.http.post(RECEIVER, json=body)
        assert r.status_code == 200 and r.json()["due_night"] == 1
        assert sb.runtime.fleet.current_code("finicity", k) != "0"
        await sb.advance(1)
        assert sb.runtime.fleet.current_code("finicity", k) == "0"
        listed = (await sb.http.get(RECEIVER)).json()
        assert listed["requests"][0]["result"]["fixed"] is True
        assert (await sb.http.get("/sandbox/connect")).json()["links"][0]["completions"]
        await sb.runtime.webhooks.drain()
        done = [json.loads(q.content) for q in received
                if json.loads(q.content)["eventType"] == "done"]
        assert [d["customerId"] for d in done] == [owner_id(sb.runtime.fleet.finicity, k)]
        again = await sb.http.post(RECEIVER, json=body)  # a redelivery is not a new request
        assert again.json()["duplicate"] is True
        assert listed["counts"] == {"accepted": 1}
    finally:
        await sb.close()


async def test_without_a_link_the_user_repairs_in_the_app_and_some_never_do():
    sb = Sandbox({"users": {"fix_share": 0.5, "fix_after_nights": 2}})
    try:
        sim = sb.runtime.fleet.mx
        candidates = [k for k in range(sim.connections)
                      if sim.conn_role[k] == PERSISTENT][:20]
        for n, k in enumerate(candidates):
            r = await sb.http.post(RECEIVER, json=fix_request(sb, "mx", k, f"r{n}"))
            assert r.status_code == 200
        acting = [r for r in (await sb.http.get(RECEIVER)).json()["requests"]
                  if r["due_night"] is not None]
        assert 0 < len(acting) < len(candidates)
        await sb.advance(1)
        assert all(r["result"] is None for r in (await sb.http.get(RECEIVER)).json()["requests"])
        await sb.advance(1)
        results = {r["id"]: r["result"] for r in (await sb.http.get(RECEIVER)).json()["requests"]}
        assert {i for i, res in results.items() if res is not None} == {r["id"] for r in acting}
    finally:
        await sb.close()


async def test_at_once_users_follow_a_redirecting_link_like_the_agents_fix_url():
    sb = Sandbox({"users": {"fix_share": 1.0, "fix_after_nights": 0}})
    k = find(sb, "finicity", PERSISTENT)
    target = await finicity_link(sb, k)

    class Redirect(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        link = f"http://127.0.0.1:{server.server_address[1]}/fix/agent-token"
        r = await sb.http.post(RECEIVER, json=fix_request(sb, "finicity", k, "r", link=link))
        assert r.json()["due_night"] == 0

        async def repaired() -> None:
            while sb.runtime.fleet.current_code("finicity", k) != "0":
                await asyncio.sleep(0.02)

        await asyncio.wait_for(repaired(), timeout=30)
        assert urlsplit(target).path.endswith(
            (await sb.http.get("/sandbox/connect")).json()["links"][0]["token"])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        await sb.close()


def signed(secret: str, raw: bytes, t: int | None = None) -> str:
    t = int(time.time()) if t is None else t
    mac = hmac.new(secret.encode(), f"{t}.".encode() + raw, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


@pytest.mark.parametrize(("header", "status"), [
    (None, 401),
    ("t=1,v1=00", 401),
    ("stale", 401),
    ("good", 200),
])
async def test_a_request_secret_requires_a_valid_recent_signature(header, status):
    sb = Sandbox({"users": {"request_secret": "sh"}})
    try:
        raw = json.dumps(fix_request(sb, "mx", find(sb, "mx", PERSISTENT), "s1")).encode()
        headers = {"Content-Type": "application/json"}
        if header == "good":
            headers["X-OpenFinance-Signature"] = signed("sh", raw)
        elif header == "stale":
            headers["X-OpenFinance-Signature"] = signed("sh", raw, int(time.time()) - 600)
        elif header is not None:
            headers["X-OpenFinance-Signature"] = header
        r = await sb.http.post(RECEIVER, content=raw, headers=headers)
        assert r.status_code == status
    finally:
        await sb.close()


async def test_bad_requests_are_refused_and_counted():
    sb = Sandbox()
    try:
        assert (await sb.http.post(RECEIVER, content=b"{not json")).status_code == 400
        assert (await sb.http.post(RECEIVER, json={"id": "x", "provider": "plaid"})).status_code \
            == 400
        unknown = await sb.http.post(RECEIVER, json={"id": "y", "provider": "mx",
                                                     "user_guid": "USR-1", "login_id": "MBR-1"})
        assert unknown.status_code == 422
        counts = (await sb.http.get(RECEIVER)).json()["counts"]
        assert counts == {"malformed": 2, "unknown_login": 1}
    finally:
        await sb.close()
