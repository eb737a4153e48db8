"""Forwarding to the owner shard (``webhooks.peers``): two listeners as two shards, the
second reached through an ASGI transport (no network), or a MockTransport for a peer that
is down, slow or answers oddly."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError

from exporter.config import FinicitySourceConfig, MxSourceConfig, Settings, ShardConfig
from exporter.sources.sharding import in_shard, shard_of
from exporter.state.database import StateDatabase
from exporter.webhooks.app import build_receivers, create_webhook_app
from exporter.webhooks.config import WebhooksConfig
from exporter.webhooks.forward import FORWARDED_HEADER, Forwarder
from exporter.webhooks.inbox import WebhookInbox
from tests.unit.test_webhooks_support import (
    SECRET,
    TOKEN,
    RecordingObserver,
    basic,
    compact,
    connect_event,
    sign,
)

SHARDS = 2
PEERS = ["http://shard-0.hooks:9879", "http://shard-1.hooks:9879"]
MX_AUTH = basic("mx", "hunter2-long")


def owner(shard: int, n: int = 0) -> str:
    """The ``n``-th customer id (digits, as Finicity's) that shard ``shard`` of 2 reads."""
    ids = (str(6030781868 + i) for i in range(1000))
    return [c for c in ids if shard_of(c, SHARDS) == shard][n]


def configs(index: int):
    shard = {"index": index, "count": SHARDS}
    return [
        FinicitySourceConfig(name="finicity-prod", provider="finicity", app_key="k",
                             partner_id="p", partner_secret=SECRET, shard=shard,
                             webhooks={"txpush_token": TOKEN}),
        MxSourceConfig(name="mx-prod", provider="mx", client_id="c", api_key="k", shard=shard,
                       webhooks={"webhook_username": "mx", "webhook_password": "hunter2-long"}),
    ]


class Shard:
    """One pod's listener: its inbox, what it counted, and its forwarder (when it has peers)."""

    def __init__(self, tmp_path, clock, index: int, transport=None):
        self.path, self.clock, self.index, self.transport = tmp_path, clock, index, transport
        self.observer = RecordingObserver()
        self.forward = None

    async def __aenter__(self):
        cfgs = configs(self.index)
        self.inbox = WebhookInbox(StateDatabase(self.path / f"state-{self.index}.db"))
        await self.inbox.open()
        owns = {c.name: (lambda o, s=c.shard: in_shard(o, s)) for c in cfgs}
        receivers = await build_receivers(cfgs, owns, self.inbox, self.clock())
        if self.transport is not None:
            self.forward = Forwarder(PEERS, {c.name: (self.index, SHARDS) for c in cfgs},
                                     self.observer, transport=self.transport)
        self.app = create_webhook_app(receivers, self.inbox, self.observer, clock=self.clock,
                                      forward=self.forward)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(self.app),
                                        base_url="http://hooks")
        return self

    async def __aexit__(self, *exc):
        await self.client.aclose()
        if self.forward is not None:
            await self.forward.aclose()
        await self.inbox.close()

    async def connect(self, body: bytes, signature: str, **headers: str):
        return await self.client.post("/webhooks/finicity-prod", content=body, headers={
            "Content-Type": "application/json", "X-Finicity-Signature": signature, **headers})

    def counted(self, source="finicity-prod"):
        return {(k, r): n for (s, k, r), n in self.observer.events.items() if s == source}


class Recorder:
    """A MockTransport handler that remembers each request and answers ``answer``."""

    def __init__(self, answer=lambda request: httpx.Response(200)):
        self.answer, self.requests = answer, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request)


@pytest.fixture
async def pods(tmp_path, clock):
    """Shard 0 forwards to shard 1 (a real listener behind an ASGI transport)."""
    one = Shard(tmp_path, clock, 1)
    to_one = httpx.ASGITransport(lambda scope, receive, send: one.app(scope, receive, send))
    async with one, Shard(tmp_path, clock, 0, to_one) as zero:
        yield zero, one


async def test_event_for_another_shards_owner_is_persisted_by_that_shard_and_answered_its_status(
        pods):
    zero, one = pods
    body = connect_event(customer=owner(1))
    r = await zero.connect(body, sign(body))
    assert r.status_code == 200
    assert zero.counted() == {("unableToConnect", "forwarded"): 1}
    assert one.counted() == {("unableToConnect", "accepted"): 1}
    assert await zero.inbox.counts() == (0, 0)
    assert await one.inbox.counts() == (1, 0)
    assert [s for s, _ in zero.observer.forwards] == ["finicity-prod"]
    assert zero.observer.forward_failures == []


async def test_event_for_this_shards_owner_is_not_forwarded(tmp_path, clock):
    peer = Recorder()
    async with Shard(tmp_path, clock, 0, httpx.MockTransport(peer)) as zero:
        body = connect_event(customer=owner(0))
        assert (await zero.connect(body, sign(body))).status_code == 200
        assert zero.counted() == {("unableToConnect", "accepted"): 1}
        assert peer.requests == []


async def test_the_raw_body_and_the_senders_signature_travel_unchanged_with_the_forwarded_header(
        tmp_path, clock):
    peer = Recorder()
    async with Shard(tmp_path, clock, 0, httpx.MockTransport(peer)) as zero:
        body = connect_event(customer=owner(1)) + b"  "  # bytes a re-serialisation would lose
        await zero.connect(body, sign(body), **{"User-Agent": "finicity", "Cookie": "c=1"})
        (sent,) = peer.requests
        assert str(sent.url) == f"{PEERS[1]}/webhooks/finicity-prod"
        assert sent.content == body
        assert sent.headers["x-finicity-signature"] == sign(body)
        assert sent.headers[FORWARDED_HEADER] == "1"
        assert "cookie" not in sent.headers


async def test_a_redelivery_forwarded_again_is_a_duplicate_at_the_owner(pods):
    zero, one = pods
    body = connect_event(customer=owner(1))
    for _ in range(2):
        assert (await zero.connect(body, sign(body))).status_code == 200
    assert zero.counted() == {("unableToConnect", "forwarded"): 2}
    assert one.counted() == {("unableToConnect", "accepted"): 1,
                             ("unableToConnect", "duplicate"): 1}


async def test_a_forged_signature_is_refused_by_the_receiver_and_never_forwarded(tmp_path, clock):
    peer = Recorder()
    async with Shard(tmp_path, clock, 0, httpx.MockTransport(peer)) as zero:
        r = await zero.connect(connect_event(customer=owner(1)), "0" * 64)
        assert r.status_code == 401
        assert peer.requests == []


async def test_the_owner_verifies_a_forwarded_request_again(pods):
    _, one = pods
    body = connect_event(customer=owner(1))
    r = await one.connect(body, "0" * 64, **{FORWARDED_HEADER: "1"})
    assert r.status_code == 401
    assert one.counted() == {("unknown", "bad_signature"): 1}
    assert await one.inbox.counts() == (0, 0)


async def test_a_forwarded_request_reaching_a_non_owner_is_ignored_not_forwarded_again(
        tmp_path, clock):
    peer = Recorder()
    async with Shard(tmp_path, clock, 0, httpx.MockTransport(peer)) as zero:
        body = connect_event(customer=owner(1))
        r = await zero.connect(body, sign(body), **{FORWARDED_HEADER: "1"})
        assert r.status_code == 200
        assert zero.counted() == {("unableToConnect", "ignored"): 1}
        assert peer.requests == []


def _refuse(request):
    raise httpx.ConnectError("connection refused", request=request)


def _time_out(request):
    raise httpx.ReadTimeout("timed out", request=request)


@pytest.mark.parametrize("answer,reason", [
    (_refuse, "unreachable"), (_time_out, "unreachable"),
    (lambda r: httpx.Response(500), "unavailable"), (lambda r: httpx.Response(404), "unavailable"),
    (lambda r: httpx.Response(503), "unavailable")], ids=["refused", "timeout", "500", "404", "503"])
async def test_a_peer_that_cannot_take_the_event_gives_503_with_retry_after_and_nothing_persisted(
        tmp_path, clock, answer, reason):
    async with Shard(tmp_path, clock, 0, httpx.MockTransport(Recorder(answer))) as zero:
        body = connect_event(customer=owner(1))
        r = await zero.connect(body, sign(body))
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert await zero.inbox.counts() == (0, 0)
        assert "forwarded" not in {res for _, res in zero.counted()}
        assert zero.observer.forward_failures == [("finicity-prod", reason)], \
            "a delivery the sender must retry is counted once, with why"


async def test_a_peer_down_is_logged_without_its_url(tmp_path, clock, caplog):
    async with Shard(tmp_path, clock, 0, httpx.MockTransport(Recorder(_refuse))) as zero:
        body = compact({"event": {"class": "account", "type": "modified", "records": [
            {"id": "1", "customerId": owner(1)}]}})
        r = await zero.client.post(f"/webhooks/finicity-prod/txpush/{TOKEN}", content=body)
        assert r.status_code == 503
    assert "not forwarded to shard 1" in caplog.text
    assert TOKEN not in caplog.text and owner(1) not in caplog.text


async def test_a_peers_refusal_is_passed_back_with_its_challenge(tmp_path, clock):
    challenge = {"WWW-Authenticate": 'Basic realm="x"'}
    peer = Recorder(lambda r: httpx.Response(401, headers=challenge))
    async with Shard(tmp_path, clock, 0, httpx.MockTransport(peer)) as zero:
        body = connect_event(customer=owner(1))
        r = await zero.connect(body, sign(body))
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="x"'
        assert zero.counted() == {("unableToConnect", "forwarded"): 1}


async def test_mx_webhooks_are_forwarded_with_the_senders_basic_credentials(pods):
    zero, one = pods
    member = compact({"action": "updated", "member": {"guid": "MBR-1", "user_guid": owner(1),
                                                      "connection_status": "CONNECTED"}})
    r = await zero.client.post("/webhooks/mx-prod", content=member,
                               headers={"Authorization": MX_AUTH})
    assert r.status_code == 204
    assert zero.counted("mx-prod") == {("member", "forwarded"): 1}
    assert one.counted("mx-prod") == {("member", "accepted"): 1}
    r = await zero.client.post("/webhooks/mx-prod", content=member + b" ",
                               headers={"Authorization": basic("mx", "wrong")})
    assert r.status_code == 401  # checked by the receiver first
    assert one.counted("mx-prod") == {("member", "accepted"): 1}


async def test_txpush_for_owners_of_both_shards_is_persisted_by_each_once(pods):
    zero, one = pods
    body = compact({"event": {"class": "account", "type": "modified", "records": [
        {"id": "1", "customerId": owner(0), "aggregationStatusCode": 185},
        {"id": "2", "customerId": owner(1), "aggregationStatusCode": 185}]}})
    url = f"/webhooks/finicity-prod/txpush/{TOKEN}"
    assert (await zero.client.post(url, content=body)).status_code == 200
    assert zero.counted() == {("txpush_account", "accepted"): 1}
    assert one.counted() == {("txpush_account", "accepted"): 1}
    assert [e.owner for e in await zero.inbox.pending()] == [owner(0)]
    assert [e.owner for e in await one.inbox.pending()] == [owner(1)]


async def test_without_peers_another_shards_owner_is_still_ignored(tmp_path, clock):
    async with Shard(tmp_path, clock, 0) as zero:
        body = connect_event(customer=owner(1))
        assert (await zero.connect(body, sign(body))).status_code == 200
        assert zero.counted() == {("unableToConnect", "ignored"): 1}
        assert Forwarder.from_config([], configs(0), RecordingObserver()) is None


def test_peers_must_be_plain_http_base_urls():
    assert WebhooksConfig(peers=["http://a-0.h:9879/", "https://b:1"]).peers == [
        "http://a-0.h:9879", "https://b:1"]
    for bad in ("a-0.h:9879", "http://a/webhooks", "http://u:p@a", "ftp://a"):
        with pytest.raises(ValidationError, match="not an http"):
            WebhooksConfig(peers=[bad])


def test_peers_must_list_every_shard_of_a_sharded_source():
    source = {"name": "fin", "provider": "finicity", "base_url": "https://api.finicity.com",
              "app_key": "k", "partner_id": "p", "partner_secret": SECRET,
              "shard": {"index": 0, "count": 2}, "webhooks": {}}
    with pytest.raises(ValidationError, match="lists 3 shards but source 'fin'"):
        Settings(sources=[source], webhooks={"peers": [*PEERS, "http://c:1"]})
    assert Settings(sources=[source], webhooks={"peers": PEERS}).webhooks.peers == PEERS


def test_shard_of_names_the_one_shard_whose_replica_reads_the_owner():
    ids = [str(6030781868 + i) for i in range(300)]
    for count in (1, 2, 3):
        for i in ids:
            owners = [index for index in range(count)
                      if in_shard(i, ShardConfig(index=index, count=count))]
            assert owners == [shard_of(i, count)]
    assert {shard_of(i, 3) for i in ids} == {0, 1, 2}


def test_unsharded_sources_are_never_forwarded():
    forward = Forwarder(PEERS, {"fin": (0, 1)}, RecordingObserver(),
                        transport=httpx.MockTransport(Recorder()))
    assert forward.elsewhere("fin", [owner(1)]) == []
    assert forward.elsewhere("other", [owner(1)]) == []
