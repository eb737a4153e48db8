"""Forwarding to the owner shard: a verified delivery for another shard's owner goes to that
shard's pod (``webhooks.peers``), so every event reaches the pod that reads its owner.

The raw body and the sender's authentication headers travel unchanged to the peer's same
route with ``X-OpenFinance-Forwarded: 1``; the peer verifies again as if the sender had
called it, persists, and its status is the sender's answer (2xx: persisted by the owner).
A peer that cannot be reached in time, or that cannot take the event (404 while it starts,
5xx), gives the sender 503 + ``Retry-After``, and nothing is persisted here. A request that
already carries the header is never forwarded again: a non-owner handles it as it would
without peers (``ignored``, left to the owner's poll). One shared ``httpx.AsyncClient`` with
bounded timeouts serves every forward, on the sources' keep-alive HTTP/1.1 transport (one
pool per peer; ``bench/bench_forward.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import httpx
from starlette.types import Scope

from exporter.config import SourceConfig
from exporter.sources.sharding import shard_of
from exporter.sources.transport import Http11Transport
from exporter.webhooks.observer import WebhookObserver

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-OpenFinance-Forwarded"
_FORWARDED_RAW = FORWARDED_HEADER.lower().encode()
# The sender's authentication (Finicity Connect signature, MX Basic) and the body's type; a
# TxPush token is in the path, which is kept.
_PASSED = frozenset({b"authorization", b"x-finicity-signature", b"content-type"})
# Passed back to the sender from the peer's answer.
_ANSWERED = ("www-authenticate", "retry-after")
RETRY_AFTER = "30"
TIMEOUT = httpx.Timeout(5.0, connect=1.0)
MAX_CONNECTIONS = 64  # per peer
KEEPALIVE = 4.0  # below the listener's idle timeout (uvicorn's 5 s), so none goes stale


@dataclass(frozen=True, slots=True)
class Forwarded:
    """The sender's answer after forwarding: ``result`` ``forwarded`` when the peers answered,
    empty when one could not take the event (not a webhook_events result, as an unwritable
    inbox is not: the sender's retry is counted; webhook_forward_failures counts why)."""

    status: int
    headers: Mapping[str, str]
    result: str

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


_UNAVAILABLE = Forwarded(503, {"Retry-After": RETRY_AFTER}, "")


class Forwarder:
    """Routes deliveries to the shard of their owners. ``shards`` maps a source to
    (this pod's index, count); a source absent from it, or not sharded, is never forwarded."""

    def __init__(self, peers: Sequence[str], shards: Mapping[str, tuple[int, int]],
                 observer: WebhookObserver, *, transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.peers = list(peers)
        self.shards = {name: s for name, s in shards.items() if s[1] > 1}
        self.observer = observer
        self.clock = clock
        self._timeout = TIMEOUT.as_dict()
        # One keep-alive pool per peer (httpcore's pool costs more CPU than the forward).
        self._pools = {} if transport is not None else {
            peer: Http11Transport(peer, max_connections=MAX_CONNECTIONS, keepalive=KEEPALIVE)
            for peer in self.peers}
        self.client = httpx.AsyncClient(timeout=TIMEOUT, transport=transport,
                                        mounts=self._pools or None, trust_env=False,
                                        follow_redirects=False)

    @classmethod
    def from_config(cls, peers: Sequence[str], source_configs: Iterable[SourceConfig],
                    observer: WebhookObserver) -> Forwarder | None:
        """None without peers: today's behaviour, nothing forwarded."""
        if not peers:
            return None
        return cls(peers, {c.name: (c.shard.index, c.shard.count) for c in source_configs},
                   observer)

    def elsewhere(self, source: str, owners: Iterable[str]) -> list[int]:
        """The other shards that own some of ``owners``, in index order."""
        shard = self.shards.get(source)
        if shard is None:
            return []
        index, count = shard
        return sorted({i for o in owners if (i := shard_of(o, count)) != index})

    async def __call__(self, source: str, owners: Sequence[str], scope: Scope,
                       body: bytes) -> Forwarded | None:
        """Forward to every other shard that owns one of ``owners``; None when there is none
        or the request was itself forwarded (handled here as without peers)."""
        targets = self.elsewhere(source, owners)
        if not targets:
            return None
        headers = {FORWARDED_HEADER: "1"}
        for key, value in scope["headers"]:
            if key == _FORWARDED_RAW:
                return None
            if key in _PASSED:
                headers[key.decode("latin-1")] = value.decode("latin-1")
        target = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            target += "?" + scope["query_string"].decode("latin-1")
        answer: Forwarded | None = None
        for index in targets:
            answer = await self._one(source, index, target, headers, body)
            if not answer.ok:
                return answer
        return answer

    async def _one(self, source: str, index: int, target: str, headers: Mapping[str, str],
                   body: bytes) -> Forwarded:
        started = self.clock()
        try:
            status, answered = await self._post(self.peers[index], target, headers, body)
        except httpx.HTTPError as exc:  # the URL may hold a TxPush token: never logged
            log.warning("webhook not forwarded to shard %d (%s), answered 503 so the sender "
                        "retries", index, type(exc).__name__)
            self.observer.webhook_forward_failed(source, "unreachable")
            return _UNAVAILABLE
        self.observer.webhook_forwarded(source, self.clock() - started)
        if status == 404 or status >= 500:
            log.warning("shard %d could not take a webhook (status %d), answered 503 so the "
                        "sender retries", index, status)
            self.observer.webhook_forward_failed(source, "unavailable")
            return Forwarded(503, {"Retry-After": answered.get("retry-after") or RETRY_AFTER},
                             "")
        return Forwarded(status, {k: answered[k] for k in _ANSWERED if k in answered},
                         "forwarded")

    async def _post(self, peer: str, target: str, headers: Mapping[str, str],
                    body: bytes) -> tuple[int, Mapping[str, str]]:
        """The peer's status and headers (lower-case names). The client's own pools are called
        without httpx's request and response objects, as the sources call them: about three
        times the forwards per CPU-second (bench/bench_forward.py)."""
        pool = self._pools.get(peer)
        if pool is not None:
            answer = await pool.exchange("POST", target, headers, body, self._timeout)
            return answer.status_code, answer.headers
        response = await self.client.post(peer + target, content=body, headers=headers)
        return response.status_code, response.headers

    async def aclose(self) -> None:
        await self.client.aclose()
