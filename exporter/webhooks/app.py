"""The webhook listener's routes (Starlette), served by a second ``Server`` of its own.

- ``POST /webhooks/<source>``: Finicity Data Connect events (``X-Finicity-Signature``) or MX
  webhooks (HTTP Basic), by the source's provider.
- ``GET|POST /webhooks/<source>/txpush/<token>``: TxPush, the verification echo
  (``?txpush_verification_code=…``) and account events. The token is the source's
  ``txpush_token``: TxPush's own signature scheme is unconfirmed (upstream-apis.md, E2).

Verify, then persist, then answer, then process: a delivery is answered 2xx only once its
rows are committed in the inbox, so an acknowledged event survives a crash; the processor
is handed the new rows afterwards. Every answer is counted once as ``openfinance_webhook_events_total``.
With ``webhooks.peers``, an event for another shard's owner is forwarded there and answered
with that pod's status (:mod:`exporter.webhooks.forward`).
Statuses: 401 bad signature or credentials, 404 unknown source or token, 408 body too slow,
413 body over ``max_body_bytes`` (refused on ``Content-Length`` before reading, or as soon
as the stream passes the limit), 503 when the inbox cannot be written or the agent is
stopping (with ``Retry-After``: the sender retries), 405 with ``Allow`` for another method,
2xx otherwise, duplicates and ignored events included. A verified body that is
not JSON or not the expected shape is counted ``malformed`` and answered per sender:
Finicity Connect 400 (its retries end after 3 days and show in its delivery log), MX 204
(MX asks for error codes only when receipt failed: it would resend the same body 12
times), TxPush 200 (a hint only; its resends for 6 hours would change nothing).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from exporter.aio import Gate
from exporter.config import SourceConfig
from exporter.sources.notices import Delivery, Malformed
from exporter.webhooks import events
from exporter.webhooks.config import MxWebhookConfig
from exporter.webhooks.forward import Forwarder
from exporter.webhooks.inbox import InboxError, PendingEvent, WebhookInbox
from exporter.webhooks.observer import WebhookObserver
from exporter.webhooks.verify import (
    SIGNATURE_HEADER,
    SecretRing,
    basic_auth_ok,
    fingerprint,
    token_ok,
)

log = logging.getLogger(__name__)

SIGNATURE_HEADER_RAW = SIGNATURE_HEADER.encode()

_VERIFICATION_CODE = re.compile(r"^[\x21-\x7e]{1,512}$")
# A 503 says when to retry: the agent is stopping (readiness is false already), or its
# inbox cannot be written just now.
RETRY_LATER = {"Retry-After": "30"}


@dataclass(frozen=True, slots=True)
class Receiver:
    """One source's push endpoint: how its deliveries are authenticated, and its shard."""

    name: str
    provider: str
    owns: Callable[[str], bool]
    ring: SecretRing | None = None         # Finicity Connect events
    txpush_token: str | None = None        # Finicity TxPush
    basic: tuple[str, str] | None = None   # MX (username, password)


class _Rejected(Exception):
    def __init__(self, status: int, result: str, kind: str = "unknown",
                 headers: Mapping[str, str] | None = None):
        super().__init__(result)
        self.status, self.result, self.kind, self.headers = status, result, kind, headers


class _Disconnected(Exception):
    """The sender went away before its body was read: nothing to answer or count."""


async def _read_body(receive: Receive, length: str, limit: int, timeout: float) -> bytes:
    """The raw body from ASGI ``receive``, refusing more than ``limit`` bytes without reading
    them all (``length``: the ``Content-Length`` header, checked first)."""
    if length.isdigit() and int(length) > limit:
        raise _Rejected(413, "too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Disconnected
                body += message.get("body", b"")
                if len(body) > limit:
                    raise _Rejected(413, "too_large")
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise _Rejected(408, "malformed") from None
    return bytes(body)


_PLAIN = (b"content-type", b"text/plain; charset=utf-8")


async def _send_answer(send: Send, status: int, headers: Mapping[str, str] | None,
                       text: str) -> None:
    """A plain-text answer (no body and no length on 204), as Starlette's responses send it."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    body = b""
    if status != 204:
        body = text.encode()
        raw += [(b"content-length", str(len(body)).encode()), _PLAIN]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class WebhookApp(Starlette):
    """Starlette for every route but the hot one: ``POST /webhooks/<source>`` is served on the
    raw ASGI messages (no Request object, router or middleware stack: about half of a
    delivery's CPU, bench/bench_webhooks.py)."""

    def __init__(self, hot: Callable[[str, Scope, Receive, Send], Awaitable[None]],
                 routes: list[Route], gate: Gate | None = None):
        super().__init__(routes=routes)
        self._hot = hot
        self.gate = gate or Gate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/webhooks/"):
            # A stop in progress: deliveries can no longer be persisted, the sender retries.
            if not self.gate.enter():
                await _send_answer(send, 503, RETRY_LATER, "")
                return
            try:
                await self._route(scope, receive, send)
            finally:
                self.gate.leave()
            return
        await super().__call__(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST":
            source = scope["path"][10:]
            if source and "/" not in source:
                await self._hot(source, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_webhook_app(receivers: Mapping[str, Receiver], inbox: WebhookInbox,
                       observer: WebhookObserver, *, clock: Callable[[], float],
                       max_body_bytes: int = 262_144, read_timeout: float = 10.0,
                       on_accepted: Callable[[list[PendingEvent]], None] = lambda _: None,
                       forward: Forwarder | None = None,
                       gate: Gate | None = None, routes: Sequence[Route] = ()) -> WebhookApp:
    """The webhook listener; ``routes``: other features' routes on it (the fix links)."""
    handlers = _Handlers(receivers, inbox, observer, clock, max_body_bytes, read_timeout,
                         on_accepted, forward)
    return WebhookApp(handlers.connect_events, [
        Route("/webhooks/{source}/txpush/{token}", handlers.txpush, methods=["GET", "POST"]),
        Route("/webhooks/{source}", _other_methods, methods=["POST"]),
        *routes,
    ], gate)


async def _other_methods(request: Request) -> Response:
    # Only for Starlette's 405 with Allow: every POST here is served by connect_events.
    return PlainTextResponse("", status_code=404)


class _Handlers:
    """The listener's routes: verify, then persist (or forward), then answer, counted once."""

    def __init__(self, receivers: Mapping[str, Receiver], inbox: WebhookInbox,
                 observer: WebhookObserver, clock: Callable[[], float], max_body_bytes: int,
                 read_timeout: float, on_accepted: Callable[[list[PendingEvent]], None],
                 forward: Forwarder | None):
        self.receivers, self.inbox, self.observer, self.clock = receivers, inbox, observer, clock
        self.max_body_bytes, self.read_timeout = max_body_bytes, read_timeout
        self.on_accepted, self.forward = on_accepted, forward

    async def accept(self, receiver: Receiver, delivery: Delivery, received_at: float,
                     ok_status: int, scope: Scope, body: bytes) -> tuple[int, str, str]:
        if delivery.ignored:
            return ok_status, delivery.kind, "ignored"
        if not delivery.owners:  # ping
            return ok_status, delivery.kind, "accepted"
        forward = self.forward
        sent = forward and await forward(receiver.name, delivery.owners, scope, body)
        if sent and not sent.ok:  # nothing persisted: the sender retries
            raise _Rejected(sent.status, sent.result, delivery.kind, sent.headers)
        owners = tuple(o for o in delivery.owners if receiver.owns(o))
        if not owners:  # another shard's owner: forwarded, or left to that shard's poll
            return (sent.status, delivery.kind, "forwarded") if sent else (
                ok_status, delivery.kind, "ignored")
        try:
            new = await self.inbox.put(receiver.name, Delivery(
                delivery.kind, owners, delivery.dedupe_key, delivery.keep_for), received_at)
        except InboxError as exc:
            log.error("webhook not persisted, answered 503 so the sender retries: %s", exc)
            raise _Rejected(503, "", delivery.kind, RETRY_LATER) from None
        if new:
            self.on_accepted(new)
        return ok_status, delivery.kind, "accepted" if new else "duplicate"

    def count(self, receiver: Receiver, status: int, kind: str, result: str) -> None:
        if result:
            self.observer.webhook_event(receiver.name, kind, result)
        log.debug("webhook source=%s kind=%s result=%s status=%d", receiver.name, kind, result,
                  status)

    def answer(self, receiver: Receiver, status: int, kind: str, result: str,
               headers: Mapping[str, str] | None = None, text: str = "") -> Response:
        self.count(receiver, status, kind, result)
        if status == 204:
            return Response(status_code=204, headers=headers)
        return PlainTextResponse(text, status_code=status, headers=headers)

    async def connect_events(self, name: str, scope: Scope, receive: Receive,
                             send: Send) -> None:
        """Finicity Connect (signed) and MX (Basic auth) deliveries, in raw ASGI."""
        receiver = self.receivers.get(name)
        if receiver is None or (receiver.ring is None and receiver.basic is None):
            await _send_answer(send, 404, None, "")
            return
        received_at = self.clock()
        ok_status = 204 if receiver.basic is not None else 200
        length = authorization = signature = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value.decode("latin-1")
            elif key == b"authorization":
                authorization = value.decode("latin-1")
            elif key == SIGNATURE_HEADER_RAW:
                signature = value.decode("latin-1")
        headers = None
        try:
            if receiver.basic is not None and not basic_auth_ok(authorization, *receiver.basic):
                raise _Rejected(401, "unauthorized", headers={
                    "WWW-Authenticate": 'Basic realm="openfinance-webhooks"'})
            body = await _read_body(receive, length or "", self.max_body_bytes,
                                    self.read_timeout)
            if receiver.ring is not None:
                if not receiver.ring.verify(body, signature, self.clock()):
                    raise _Rejected(401, "bad_signature")
                delivery = events.finicity_connect(body)
            else:
                delivery = events.mx(body)
            status, kind, result = await self.accept(receiver, delivery, received_at,
                                                     ok_status, scope, body)
        except _Disconnected:
            return
        except Malformed as exc:
            status, kind, result = 400 if receiver.ring is not None else 204, exc.kind, "malformed"
        except _Rejected as r:
            status, kind, result, headers = r.status, r.kind, r.result, r.headers
        self.count(receiver, status, kind, result)
        await _send_answer(send, status, headers, "")

    async def txpush(self, request: Request) -> Response:
        """TxPush deliveries and their verification handshake, on a tokened path."""
        receiver = self.receivers.get(request.path_params["source"])
        if receiver is None or receiver.txpush_token is None:
            return PlainTextResponse("", status_code=404)
        if not token_ok(request.path_params["token"], receiver.txpush_token):
            return self.answer(receiver, 404, "unknown", "unauthorized")
        received_at = self.clock()
        code = request.query_params.get("txpush_verification_code")
        if code is not None or request.method == "GET":
            if code is None or not _VERIFICATION_CODE.match(code):
                return self.answer(receiver, 400, "txpush_verification", "malformed")
            return self.answer(receiver, 200, "txpush_verification", "accepted", text=code,
                               headers={"X-Content-Type-Options": "nosniff"})
        try:
            body = await _read_body(request.receive, request.headers.get("content-length", ""),
                                    self.max_body_bytes, self.read_timeout)
            status, kind, result = await self.accept(
                receiver, events.txpush(body), received_at, 200, request.scope, body)
        except _Disconnected:
            return Response(status_code=204)
        except Malformed as exc:
            return self.answer(receiver, 200, exc.kind, "malformed")
        except _Rejected as r:
            return self.answer(receiver, r.status, r.kind, r.result, r.headers)
        return self.answer(receiver, status, kind, result)


async def build_receivers(source_configs: Iterable[SourceConfig],
                          owns: Mapping[str, Callable[[str], bool]], inbox: WebhookInbox,
                          now: float) -> dict[str, Receiver]:
    """One :class:`Receiver` per source with a ``webhooks:`` block. A previous partner secret
    stays valid for its grace period from the first time this agent saw it."""
    receivers: dict[str, Receiver] = {}
    for cfg in source_configs:
        hooks = cfg.webhooks
        if hooks is None:
            continue
        own = owns.get(cfg.name, _owns_all)
        if isinstance(hooks, MxWebhookConfig):
            password = hooks.webhook_password.get_secret_value() if hooks.webhook_password else ""
            receivers[cfg.name] = Receiver(cfg.name, cfg.provider, own,
                                           basic=(hooks.webhook_username, password))
            continue
        secret = getattr(cfg, "partner_secret", None)
        if secret is None:
            raise ValueError(f"source {cfg.name}: webhooks need the partner secret")
        previous, until = None, 0.0
        if hooks.previous_secret is not None:
            previous = hooks.previous_secret.get_secret_value().encode()
            first = await inbox.first_seen(cfg.name, fingerprint(previous), now)
            until = first + hooks.previous_secret_grace
        token = hooks.txpush_token.get_secret_value() if hooks.txpush_token else None
        receivers[cfg.name] = Receiver(
            cfg.name, cfg.provider, own,
            ring=SecretRing(secret.get_secret_value().encode(), previous, until),
            txpush_token=token)
    return receivers


def _owns_all(owner: str) -> bool:
    return True
