"""The webhook listener: verification, limits, dedupe and answers (httpx over ASGI, no network)."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest

from exporter.config import FinicitySourceConfig, MxSourceConfig
from exporter.state.database import StateDatabase
from exporter.webhooks.app import build_receivers, create_webhook_app
from exporter.webhooks.inbox import InboxError, WebhookInbox
from tests.unit.test_webhooks_support import (
    CUSTOMER,
    OLD_SECRET,
    SECRET,
    TOKEN,
    Clock,
    RecordingObserver,
    basic,
    compact,
    connect_event,
    sign,
)

DAY = 86400.0
USER_GUID = "USR-fbf4ba4e-b5c2-4e5b-8f2f-0e43d9e1a0aa"


def source_configs(previous: bool = True):
    fin_hooks = {"txpush_token": TOKEN}
    if previous:
        fin_hooks |= {"previous_secret": OLD_SECRET, "previous_secret_grace": "1d"}
    return [
        FinicitySourceConfig(name="finicity-prod", provider="finicity", app_key="k",
                             partner_id="p", partner_secret=SECRET, webhooks=fin_hooks),
        MxSourceConfig(name="mx-prod", provider="mx", client_id="c", api_key="k",
                       webhooks={"webhook_username": "mx", "webhook_password": "hunter2-long"}),
        MxSourceConfig(name="mx-quiet", provider="mx", client_id="c", api_key="k"),
    ]


class Listener:
    """The app, its inbox and what it counted."""

    def __init__(self, tmp_path, clock: Clock, *, owns=None, max_body_bytes=4096,
                 read_timeout=10.0):
        self.tmp_path, self.clock, self.owns = tmp_path, clock, owns or {}
        self.max_body_bytes, self.read_timeout = max_body_bytes, read_timeout
        self.observer = RecordingObserver()
        self.woken = 0
        self.accepted = []

    async def __aenter__(self):
        self.inbox = WebhookInbox(StateDatabase(self.tmp_path / "state.db"))
        await self.inbox.open()
        receivers = await build_receivers(source_configs(), self.owns, self.inbox, self.clock())
        app = create_webhook_app(receivers, self.inbox, self.observer, clock=self.clock,
                                 max_body_bytes=self.max_body_bytes,
                                 read_timeout=self.read_timeout, on_accepted=self._wake)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                        base_url="http://hooks")
        return self

    def _wake(self, events):
        self.woken += 1
        self.accepted.extend(events)

    async def __aexit__(self, *exc):
        await self.client.aclose()
        await self.inbox.close()

    async def connect(self, body: bytes, signature: str | None = None, source="finicity-prod"):
        headers = {"content-type": "application/json"}
        if signature is not None:
            headers["X-Finicity-Signature"] = signature
        return await self.client.post(f"/webhooks/{source}", content=body, headers=headers)

    def counted(self, source="finicity-prod"):
        return {(k, r): n for (s, k, r), n in self.observer.events.items() if s == source}


async def test_signed_event_is_persisted_then_answered_200(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        body = connect_event()
        r = await hooks.connect(body, sign(body))
        assert r.status_code == 200
        assert hooks.counted() == {("unableToConnect", "accepted"): 1}
        assert await hooks.inbox.counts() == (1, 0)
        assert hooks.woken == 1


async def test_signature_header_is_read_case_insensitively_and_hex_case_is_ignored(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        body = connect_event()
        r = await hooks.client.post("/webhooks/finicity-prod", content=body,
                                    headers={"x-finicity-signature": sign(body).upper()})
        assert r.status_code == 200


async def test_signature_of_reserialised_json_does_not_verify_the_raw_bytes(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        body = connect_event()
        spaced = json.dumps(json.loads(body)).encode()  # Python's default spacing
        r = await hooks.connect(body, sign(spaced))
        assert r.status_code == 401
        assert hooks.counted() == {("unknown", "bad_signature"): 1}
        assert await hooks.inbox.counts() == (0, 0)


@pytest.mark.parametrize("signature", [None, "", "not-hex", "0" * 64])
async def test_missing_or_forged_signature_is_401_and_changes_nothing(tmp_path, clock, signature):
    async with Listener(tmp_path, clock) as hooks:
        r = await hooks.connect(connect_event(), signature)
        assert r.status_code == 401
        assert hooks.counted() == {("unknown", "bad_signature"): 1}
        assert await hooks.inbox.counts() == (0, 0)
        assert hooks.woken == 0


async def test_previous_secret_verifies_during_its_grace_period_only(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        first = connect_event(event_id="1-a")
        assert (await hooks.connect(first, sign(first, OLD_SECRET))).status_code == 200
    clock.advance(DAY + 1)  # a restart a day later: the grace counts from the first sighting
    async with Listener(tmp_path, clock) as hooks:
        late = connect_event(event_id="1-b")
        assert (await hooks.connect(late, sign(late, OLD_SECRET))).status_code == 401
        assert (await hooks.connect(late, sign(late))).status_code == 200


async def test_replayed_event_id_is_answered_2xx_and_counted_duplicate(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        body = connect_event()
        for _ in range(3):
            assert (await hooks.connect(body, sign(body))).status_code == 200
        assert hooks.counted() == {("unableToConnect", "accepted"): 1,
                                   ("unableToConnect", "duplicate"): 2}
        assert await hooks.inbox.counts() == (1, 0)
        assert hooks.woken == 1


async def test_a_redelivery_after_a_restart_is_still_a_duplicate(tmp_path, clock):
    body = connect_event()
    async with Listener(tmp_path, clock) as hooks:
        await hooks.connect(body, sign(body))
    clock.advance(2 * DAY)
    async with Listener(tmp_path, clock) as hooks:
        assert (await hooks.connect(body, sign(body))).status_code == 200
        assert hooks.counted() == {("unableToConnect", "duplicate"): 1}


async def test_concurrent_copies_of_one_event_are_persisted_once(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        body = connect_event()
        answers = await asyncio.gather(*(hooks.connect(body, sign(body)) for _ in range(20)))
        assert {a.status_code for a in answers} == {200}
        assert hooks.counted()[("unableToConnect", "accepted")] == 1
        assert await hooks.inbox.counts() == (1, 0)


async def test_ping_without_event_id_is_answered_2xx(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        body = b'{"eventType":"ping","payload":{}}'
        r = await hooks.connect(body, sign(body))
        assert r.status_code == 200
        assert hooks.counted() == {("ping", "accepted"): 1}
        assert await hooks.inbox.counts() == (0, 0)


@pytest.mark.parametrize(("event_type", "kind"), [("started", "started"),
                                                  ("somethingNew", "other")])
async def test_events_without_status_news_are_ignored_with_2xx(tmp_path, clock, event_type, kind):
    async with Listener(tmp_path, clock) as hooks:
        body = connect_event(event_type)
        assert (await hooks.connect(body, sign(body))).status_code == 200
        assert hooks.counted() == {(kind, "ignored"): 1}
        assert await hooks.inbox.counts() == (0, 0)


async def test_body_over_the_limit_by_content_length_is_413(tmp_path, clock):
    async with Listener(tmp_path, clock, max_body_bytes=1024) as hooks:
        body = b"{" + b" " * 4096 + b"}"
        r = await hooks.connect(body, sign(body))
        assert r.status_code == 413
        assert hooks.counted() == {("unknown", "too_large"): 1}


async def test_streamed_body_over_the_limit_is_refused_before_the_end(tmp_path, clock):
    sent = 0

    async def endless():
        nonlocal sent
        while True:
            sent += 1
            yield b" " * 512

    async with Listener(tmp_path, clock, max_body_bytes=1024) as hooks:
        r = await hooks.client.post("/webhooks/finicity-prod", content=endless(),
                                    headers={"X-Finicity-Signature": "0" * 64})
        assert r.status_code == 413
        assert hooks.counted() == {("unknown", "too_large"): 1}
        assert sent < 10


async def test_slow_body_times_out_with_408(tmp_path, clock):
    never = asyncio.Event()

    async def stalled():
        yield b'{"eventType":'
        await never.wait()
        yield b"}"

    async with Listener(tmp_path, clock, read_timeout=0.05) as hooks:
        r = await hooks.client.post("/webhooks/finicity-prod", content=stalled())
        assert r.status_code == 408
        assert hooks.counted() == {("unknown", "malformed"): 1}


@pytest.mark.parametrize(("body", "kind"), [
    (b"not json", "unknown"), (b"[1,2]", "unknown"), (b'{"eventType":5}', "unknown"),
    (b"[" * 100_000 + b"]" * 100_000, "unknown"),
    (b'{"eventType":"done","eventId":"x"}', "done"),
    (b'{"eventType":"done","customerId":"a b"}', "done")])
async def test_signed_but_malformed_connect_event_is_400(tmp_path, clock, body, kind):
    async with Listener(tmp_path, clock, max_body_bytes=300_000) as hooks:
        r = await hooks.connect(body, sign(body))
        assert r.status_code == 400
        assert hooks.counted() == {(kind, "malformed"): 1}
        assert await hooks.inbox.counts() == (0, 0)


async def test_malformed_mx_and_txpush_bodies_are_counted_but_acknowledged(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        r = await hooks.client.post("/webhooks/mx-prod", content=b"{oops",
                                    headers={"Authorization": basic("mx", "hunter2-long")})
        assert r.status_code == 204  # MX would resend the same body 12 times
        r = await hooks.client.post(f"/webhooks/finicity-prod/txpush/{TOKEN}",
                                    content=b"<event class='account'/>")
        assert r.status_code == 200
        assert hooks.counted("mx-prod") == {("unknown", "malformed"): 1}
        assert hooks.counted() == {("unknown", "malformed"): 1}
        assert await hooks.inbox.counts() == (0, 0)


@pytest.mark.parametrize("path", ["/webhooks/nope", "/webhooks/mx-quiet"])
async def test_unknown_or_unconfigured_source_is_404(tmp_path, clock, path):
    async with Listener(tmp_path, clock) as hooks:
        r = await hooks.client.post(path, content=b"{}")
        assert r.status_code == 404
        assert not hooks.observer.events


async def test_event_for_another_shards_owner_is_ignored_and_left_to_its_poll(tmp_path, clock):
    async with Listener(tmp_path, clock, owns={"finicity-prod": lambda o: False}) as hooks:
        body = connect_event()
        assert (await hooks.connect(body, sign(body))).status_code == 200
        assert hooks.counted() == {("unableToConnect", "ignored"): 1}
        assert await hooks.inbox.counts() == (0, 0)


async def test_inbox_failure_answers_503_so_the_sender_retries(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        async def broken(*args):
            raise InboxError("webhook inbox state.db: disk I/O error")
        hooks.inbox.put = broken
        body = connect_event()
        assert (await hooks.connect(body, sign(body))).status_code == 503
        assert hooks.woken == 0


def mx_status(user=USER_GUID, status="CHALLENGED"):
    return compact({"action": "CHANGED", "type": "CONNECTION_STATUS",
                    "connection_status": status, "connection_status_id": 3,
                    "member_guid": "MBR-1", "user_guid": user})


async def test_mx_webhook_with_the_right_basic_credentials_gets_204(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        r = await hooks.client.post("/webhooks/mx-prod", content=mx_status(),
                                    headers={"Authorization": basic("mx", "hunter2-long")})
        assert r.status_code == 204
        member = compact({"action": "updated", "member": {"guid": "MBR-1", "user_guid": "USR-2",
                                                          "connection_status": "CONNECTED"}})
        r = await hooks.client.post("/webhooks/mx-prod", content=member,
                                    headers={"Authorization": basic("mx", "hunter2-long")})
        assert r.status_code == 204
        assert hooks.counted("mx-prod") == {("connection_status", "accepted"): 1,
                                            ("member", "accepted"): 1}
        assert await hooks.inbox.counts() == (2, 0)


@pytest.mark.parametrize("auth", [None, basic("mx", "wrong"), basic("other", "hunter2-long"),
                                  "Basic !!!", "Bearer hunter2-long"])
async def test_mx_webhook_with_wrong_credentials_is_401_unauthorized(tmp_path, clock, auth):
    async with Listener(tmp_path, clock) as hooks:
        headers = {"Authorization": auth} if auth else {}
        r = await hooks.client.post("/webhooks/mx-prod", content=mx_status(), headers=headers)
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Basic")
        assert hooks.counted("mx-prod") == {("unknown", "unauthorized"): 1}
        assert await hooks.inbox.counts() == (0, 0)


async def test_mx_identical_notice_is_a_duplicate_and_other_types_are_ignored(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        auth = {"Authorization": basic("mx", "hunter2-long")}
        for _ in range(2):
            await hooks.client.post("/webhooks/mx-prod", content=mx_status(), headers=auth)
        await hooks.client.post("/webhooks/mx-prod", headers=auth,
                                content=b'{"type":"STATEMENT","user_guid":"USR-1"}')
        assert hooks.counted("mx-prod") == {("connection_status", "accepted"): 1,
                                            ("connection_status", "duplicate"): 1,
                                            ("other", "ignored"): 1}


async def test_txpush_verification_code_is_echoed_as_plain_text(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        r = await hooks.client.get(f"/webhooks/finicity-prod/txpush/{TOKEN}",
                                   params={"txpush_verification_code": "a1b2c3"})
        assert r.status_code == 200
        assert r.text == "a1b2c3"
        assert r.headers["content-type"].startswith("text/plain")
        assert hooks.counted() == {("txpush_verification", "accepted"): 1}


async def test_txpush_with_a_wrong_token_is_404_and_counted_unauthorized(tmp_path, clock):
    async with Listener(tmp_path, clock) as hooks:
        r = await hooks.client.get("/webhooks/finicity-prod/txpush/" + "x" * 36,
                                   params={"txpush_verification_code": "a1b2c3"})
        assert r.status_code == 404
        assert hooks.counted() == {("unknown", "unauthorized"): 1}


async def test_txpush_account_event_is_a_hint_for_its_customer(tmp_path, clock):
    event = {"event": {"class": "account", "type": "modified", "records": [
        {"id": "6055993964", "customerId": int(CUSTOMER), "aggregationStatusCode": 185,
         "aggregationAttemptDate": 1688650529}]}}
    async with Listener(tmp_path, clock) as hooks:
        url = f"/webhooks/finicity-prod/txpush/{TOKEN}"
        assert (await hooks.client.post(url, content=compact(event))).status_code == 200
        assert (await hooks.client.post(url, content=compact(event))).status_code == 200
        tx = {"event": {"class": "transaction", "type": "created", "records": [{"id": 1}]}}
        assert (await hooks.client.post(url, content=compact(tx))).status_code == 200
        assert hooks.counted() == {("txpush_account", "accepted"): 1,
                                   ("txpush_account", "duplicate"): 1,
                                   ("txpush_transaction", "ignored"): 1}
        assert [(e.source, e.owner, e.kind) for e in hooks.accepted] == [
            ("finicity-prod", CUSTOMER, "txpush_account")]


async def test_no_id_body_or_secret_is_logged_at_info(tmp_path, clock, caplog):
    caplog.set_level(logging.INFO)
    async with Listener(tmp_path, clock) as hooks:
        body = connect_event()
        await hooks.connect(body, sign(body))
        await hooks.connect(body, "0" * 64)
        await hooks.client.post("/webhooks/mx-prod", content=mx_status(),
                                headers={"Authorization": basic("mx", "wrong")})
    text = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.INFO)
    for secret in (CUSTOMER, USER_GUID, SECRET, "hunter2-long", TOKEN, "d10dac58"):
        assert secret not in text
