"""The sandbox's webhooks: what goes out when nights change and fixes complete, signed and
authenticated like the real ones, delivered at least once (httpx MockTransport receiver)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections import Counter
from urllib.parse import urlsplit

import httpx
import pytest

from exporter.sandbox import FINICITY_PARTNER_ID, FINICITY_PARTNER_SECRET
from exporter.sandbox.fleet import OTP_LOOP, PERSISTENT
from exporter.sandbox.ids import connection_id, owner_id
from exporter.sandbox.webhooks import MX_ACTIONABLE
from tests.unit.test_sandbox_connect import find
from tests.unit.test_sandbox_support import Sandbox

FIN_URL = "http://receiver.test/webhooks/finicity-sandbox"
MX_URL = "http://receiver.test/webhooks/mx-sandbox"
HOOKS = {"finicity_url": FIN_URL, "finicity_secret": "rotated-secret", "mx_url": MX_URL,
         "mx_username": "mx", "mx_password": "pw", "retry_seconds": 0}


class Receiver:
    """Records every POST; answers ``fail`` (a list of statuses or exceptions) first."""

    def __init__(self, fail: list[int | Exception] | None = None):
        self.requests: list[httpx.Request] = []
        self.fail = list(fail or [])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail:
            outcome = self.fail.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return httpx.Response(outcome)
        return httpx.Response(204 if "mx" in request.url.path else 200)

    def bodies(self, url: str) -> list[dict]:
        return [json.loads(r.content) for r in self.requests if str(r.url) == url]


def sandbox(receiver: Receiver, **hooks) -> Sandbox:
    return Sandbox({"webhooks": {**HOOKS, **hooks}} if hooks is not None else {},
                   webhook_transport=httpx.MockTransport(receiver))


def expected_signature(secret: str, body: bytes) -> str:
    """An implementation independent of the sandbox's (as a receiver would write it)."""
    mac = hmac.HMAC(secret.encode("utf-8"), digestmod=hashlib.sha256)
    mac.update(body)
    return mac.hexdigest()


async def login_codes(sb: Sandbox, token: str) -> dict[tuple[str, str], str]:
    """(customerId, institutionLoginId) -> the login's first non-ok code, else "0", as read
    over the API (the ground truth the events must agree with)."""
    out: dict[tuple[str, str], str] = {}
    for customer in await sb.all_customer_ids(token):
        accounts = (await sb.finicity(f"/aggregation/v1/customers/{customer}/accounts",
                                      token)).json()["accounts"]
        for a in accounts:
            key = (customer, str(a["institutionLoginId"]))
            code = str(a.get("aggregationStatusCode", "NONE"))
            if out.get(key, "0") == "0":
                out[key] = code
    return out


async def test_a_new_night_sends_signed_finicity_events_for_logins_that_broke():
    receiver = Receiver()
    sb = sandbox(receiver)
    try:
        token = await sb.token()
        before = await login_codes(sb, token)
        await sb.advance(1)
        await sb.runtime.webhooks.drain()
        after = await login_codes(sb, token)
        events = [r for r in receiver.requests if str(r.url) == FIN_URL]
        assert events, "night 1 has noise and MFA blips"
        ids = []
        for request in events:
            assert request.headers["content-type"] == "application/json"
            assert request.headers["x-finicity-signature"] == expected_signature(
                "rotated-secret", request.content)
            assert request.content == json.dumps(json.loads(request.content),
                                                 separators=(",", ":"),
                                                 ensure_ascii=False).encode()
            body = json.loads(request.content)
            assert list(body) == ["customerId", "eventType", "eventId", "payload"]
            assert body["eventType"] == "unableToConnect"
            assert set(body["payload"]) == {"institutionId", "code"}
            ids.append(body["eventId"])
        assert len(set(ids)) == len(ids)
        # One event per login that went to a (different) non-ok code, none for recoveries.
        expected = Counter((customer, code) for (customer, _), code in after.items()
                           if code not in (before[customer, _], "0"))
        got = Counter((b["customerId"], str(b["payload"]["code"]))
                      for b in (json.loads(r.content) for r in events))
        assert got == expected
    finally:
        await sb.close()


async def member_statuses(sb: Sandbox) -> dict[str, str | None]:
    out = {}
    for user in await sb.all_user_guids():
        body = (await sb.mx(f"/users/{user}/members", records_per_page=100)).json()
        out.update((m["guid"], m["connection_status"]) for m in body["members"])
    return out


async def test_mx_gets_connection_status_for_actionable_statuses_and_member_webhooks():
    receiver = Receiver()
    sb = sandbox(receiver)
    try:
        before = await member_statuses(sb)
        await sb.advance(1)
        await sb.runtime.webhooks.drain()
        after = await member_statuses(sb)
        changed = {m: st for m, st in after.items() if st != before[m]}
        mx = [r for r in receiver.requests if str(r.url) == MX_URL]
        assert mx
        auth = "Basic " + base64.b64encode(b"mx:pw").decode()
        assert all(r.headers["authorization"] == auth for r in mx)
        bodies = [json.loads(r.content) for r in mx]
        statuses = [b for b in bodies if b.get("type") == "CONNECTION_STATUS"]
        members = [b["member"] for b in bodies if b.get("action") == "updated"]
        assert members and statuses
        assert {m["guid"]: m["connection_status"] for m in members} == changed
        assert len(members) == len(changed)
        assert sorted(b["member_guid"] for b in statuses) == sorted(
            m for m, st in changed.items() if st in MX_ACTIONABLE)
        assert {b["connection_status"] for b in statuses} <= MX_ACTIONABLE
        assert all(b["action"] == "CHANGED" and b["member_guid"].startswith("MBR-")
                   and isinstance(b["connection_status_id"], int) for b in statuses)
        # every CONNECTION_STATUS comes with the member webhook of the same change
        assert {b["member_guid"] for b in statuses} <= {m["guid"] for m in members}
        assert all(isinstance(m["aggregated_at"], int) for m in members)
        assert len({m["revision"] for m in members}) == len(members)
        challenged = next((b for b in statuses if b["connection_status"] == "CHALLENGED"), None)
        if challenged is not None:
            assert challenged["connection_status_id"] == 3
    finally:
        await sb.close()


async def test_completing_a_fix_sends_done_to_the_sessions_webhook_with_its_data():
    receiver = Receiver()
    sb = sandbox(receiver)
    try:
        token = await sb.token()
        sim = sb.runtime.fleet.finicity
        k = find(sb, "finicity", PERSISTENT)
        customer, login = owner_id(sim, k), connection_id(sim, k)
        session_hook = "http://receiver.test/session-hook"
        r = await sb.finicity_post("/connect/v2/generate/fix", token, {
            "partnerId": FINICITY_PARTNER_ID, "customerId": customer,
            "institutionLoginId": login, "webhook": session_hook,
            "webhookData": {"fix": "abc"}, "webhookHeaders": {"X-Link": "t1"}})
        path = urlsplit(r.json()["link"]).path
        assert (await sb.http.get(path, params={"complete": "1"})).status_code == 200
        await sb.runtime.webhooks.drain()
        done = [r for r in receiver.requests if str(r.url) == session_hook]
        assert len(done) == 1
        assert done[0].headers["x-link"] == "t1"
        assert done[0].headers["x-finicity-signature"] == expected_signature(
            "rotated-secret", done[0].content)
        body = json.loads(done[0].content)
        assert body["eventType"] == "done" and body["payload"] == {}
        assert body["customerId"] == customer and body["webhookData"] == {"fix": "abc"}
        # the fix is announced: the next night reports only what changes after it
        assert sb.runtime.webhooks._announced["finicity"][k] == "0"
    finally:
        await sb.close()


async def test_an_mx_fix_sends_the_member_back_at_connected_with_the_callback_payload():
    receiver = Receiver()
    sb = sandbox(receiver)
    try:
        sim = sb.runtime.fleet.mx
        k = find(sb, "mx", PERSISTENT)
        user, member = owner_id(sim, k), connection_id(sim, k)
        r = await sb.mx_post(f"/users/{user}/widget_urls", {"widget_url": {
            "widget_type": "connect_widget", "current_member_guid": member}},
            **{"X-Callback-Payload": "b64payload"})
        await sb.http.get(urlsplit(r.json()["widget_url"]["url"]).path,
                          params={"complete": "1"})
        await sb.runtime.webhooks.drain()
        (request,) = [r for r in receiver.requests if str(r.url) == MX_URL]
        assert request.headers["x-callback-payload"] == "b64payload"
        member_body = json.loads(request.content)["member"]
        assert member_body["guid"] == member and member_body["connection_status"] == "CONNECTED"
        assert member_body["connection_status_id"] == 6
    finally:
        await sb.close()


async def test_failed_deliveries_are_retried_until_they_succeed_or_run_out():
    receiver = Receiver(fail=[500, httpx.ConnectError("refused"), 503])
    sb = sandbox(receiver, mx_url=None, max_attempts=3)
    try:
        customer, login = (lambda sim, k: (owner_id(sim, k), connection_id(sim, k)))(
            sb.runtime.fleet.finicity, find(sb, "finicity", PERSISTENT))
        fixed = await sb.http.post("/sandbox/fix", params={
            "provider": "finicity", "owner_id": customer, "login_id": login})
        assert fixed.json()["fixed"] is True
        await sb.runtime.webhooks.drain()
        # 500, refused, 503: three attempts, then given up
        stats = (await sb.http.get("/sandbox/webhooks")).json()
        assert stats["counters"]["failed"] == 1 and stats["counters"]["retried"] == 2
        assert stats["recent"][-1]["errors"] == ["HTTP 500", "ConnectError", "HTTP 503"]
        assert len(receiver.requests) == 3
        assert len({r.content for r in receiver.requests}) == 1  # the same bytes each time

        receiver.fail = [502]
        await sb.http.post("/sandbox/fix", params={
            "provider": "finicity", "owner_id": customer, "login_id": login})
        await sb.runtime.webhooks.drain()
        assert receiver.requests[-1].content == receiver.requests[-2].content
        last = (await sb.http.get("/sandbox/webhooks")).json()["recent"][-1]
        assert last["status"] == "delivered" and last["attempts"] == 2
    finally:
        await sb.close()


async def test_redeliver_once_sends_every_event_twice_byte_for_byte():
    receiver = Receiver()
    sb = sandbox(receiver, redeliver_once=True)
    try:
        await sb.advance(1)
        await sb.runtime.webhooks.drain()
        counts = Counter(r.content for r in receiver.requests)
        assert counts and set(counts.values()) == {2}
        stats = sb.runtime.webhooks.stats_json()
        assert stats["counters"]["redelivered"] == len(counts)
    finally:
        await sb.close()


async def test_nothing_is_sent_without_a_configuration_and_put_turns_it_on():
    receiver = Receiver()
    sb = Sandbox(webhook_transport=httpx.MockTransport(receiver))
    try:
        await sb.advance(1)
        assert await sb.runtime.webhooks.sync() == 0
        assert receiver.requests == []
        r = await sb.http.put("/sandbox/webhooks", json={"finicity_url": FIN_URL,
                                                         "finicity_secret": "s3cret"})
        assert r.status_code == 200
        assert r.json()["config"]["finicity_secret"] == "<set>"
        assert "s3cret" not in r.text
        await sb.advance(1)
        await sb.runtime.webhooks.drain()
        assert receiver.requests
        assert all(r.headers["x-finicity-signature"] == expected_signature("s3cret", r.content)
                   for r in receiver.requests)
        bad = await sb.http.put("/sandbox/webhooks", json={"max_attempts": 0})
        assert bad.status_code == 400
        assert (await sb.http.put("/sandbox/webhooks", content=b"null")).json()["config"] is None
        assert (await sb.http.put("/sandbox/webhooks")).json()["config"] is None
    finally:
        await sb.close()


async def test_default_secret_is_the_sandbox_partner_secret():
    receiver = Receiver()
    sb = Sandbox({"webhooks": {"finicity_url": FIN_URL, "retry_seconds": 0}},
                 webhook_transport=httpx.MockTransport(receiver))
    try:
        await sb.advance(1)
        await sb.runtime.webhooks.drain()
        assert receiver.requests
        request = receiver.requests[0]
        assert request.headers["x-finicity-signature"] == expected_signature(
            FINICITY_PARTNER_SECRET, request.content)
    finally:
        await sb.close()


@pytest.mark.parametrize("url", ["not a url", "ftp://x"])
async def test_a_bad_url_is_a_counted_failure_not_a_crash(url):
    sb = Sandbox({"webhooks": {"finicity_url": url, "retry_seconds": 0, "max_attempts": 2}})
    try:
        await sb.advance(1)
        await sb.runtime.webhooks.drain()
        counters = sb.runtime.webhooks.counters
        assert counters["failed"] == counters["queued"] > 0
    finally:
        await sb.close()


async def test_after_a_fix_of_an_otp_loop_the_relapse_is_announced_the_next_night():
    receiver = Receiver()
    sb = sandbox(receiver, mx_url=None)
    try:
        await sb.advance(1)
        sim = sb.runtime.fleet.finicity
        k = find(sb, "finicity", OTP_LOOP)
        customer, login = owner_id(sim, k), connection_id(sim, k)
        fixed = await sb.http.post("/sandbox/fix", params={
            "provider": "finicity", "owner_id": customer, "login_id": login})
        assert fixed.json()["fixed"] is True
        await sb.advance(1)
        await sb.runtime.webhooks.drain()
        events = [json.loads(r.content) for r in receiver.requests]
        mine = [(e["eventType"], e["payload"].get("code")) for e in events
                if e["customerId"] == customer]
        # night 1: the loop starts (185); the fix (done); night 2: 185 again, announced
        done = mine.index(("done", None))
        assert ("unableToConnect", 185) in mine[:done]
        assert ("unableToConnect", 185) in mine[done + 1:]
    finally:
        await sb.close()
