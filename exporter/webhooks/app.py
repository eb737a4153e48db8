"""The webhook listener's routes (Starlette), served by a second ``Server`` of its own.

- ``POST /webhooks/<source>``: Finicity Data Connect events (``X-Finicity-Signature``) or MX
  webhooks (HTTP Basic), by the source's provider.
- ``GET|POST /webhooks/<source>/txpush/<token>``: TxPush, the verification echo
  (``?txpush_verification_code=…``) and account events. The token is the source's
  ``txpush_token``: TxPush's own signature scheme is unconfirmed (upstream-apis.md, E2).

Verify, then persist, then answer, then process: a delivery is answered 2xx only once its
rows are committed in the inbox, so an acknowledged event survives a crash; the processor
is handed the new rows afterwards. Every answer is counted once as ``openfinance_webhook_events_total``.
Statuses: 401 bad signature or credentials, 404 unknown source or token, 408 body too slow,
413 body over ``max_body_bytes`` (refused on ``Content-Length`` before reading, or as soon
as the stream passes the limit), 503 when the inbox cannot be written (the sender
retries), 2xx otherwise, duplicates and ignored events included. A verified body that is
not JSON or not the expected shape is counted ``malformed`` and answered per sender:
Finicity Connect 400 (its retries end after 3 days and show in its delivery log), MX 204
(MX asks for error codes only when receipt failed: it would resend the same body 12
times), TxPush 200 (a hint only; its resends for 6 hours would change nothing).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from exporter.config import SourceConfig
from exporter.webhooks import events
from exporter.webhooks.config import MxWebhookConfig
from exporter.webhooks.events import Delivery, Malformed
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

_VERIFICATION_CODE = re.compile(r"^[\x21-\x7e]{1,512}$")


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


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The raw body, refusing more than ``limit`` bytes without reading them all."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise _Rejected(413, "too_large")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise _Rejected(413, "too_large")
    except TimeoutError:
        raise _Rejected(408, "malformed") from None
    return bytes(body)


def create_webhook_app(receivers: Mapping[str, Receiver], inbox: WebhookInbox,
                       observer: WebhookObserver, *, clock: Callable[[], float],
                       max_body_bytes: int = 262_144, read_timeout: float = 10.0,
                       on_accepted: Callable[[list[PendingEvent]], None] = lambda _: None,
                       ) -> Starlette:
    async def accept(receiver: Receiver, delivery: Delivery, received_at: float,
                     ok_status: int) -> tuple[int, str, str]:
        if delivery.ignored:
            return ok_status, delivery.kind, "ignored"
        if not delivery.owners:  # ping
            return ok_status, delivery.kind, "accepted"
        owners = tuple(o for o in delivery.owners if receiver.owns(o))
        if not owners:  # another shard's owner: left to that shard's poll
            return ok_status, delivery.kind, "ignored"
        try:
            new = await inbox.put(receiver.name, Delivery(
                delivery.kind, owners, delivery.dedupe_key, delivery.keep_for), received_at)
        except InboxError as exc:
            log.error("webhook not persisted, answered 503 so the sender retries: %s", exc)
            raise _Rejected(503, "", delivery.kind) from None
        if new:
            on_accepted(new)
        return ok_status, delivery.kind, "accepted" if new else "duplicate"

    def answer(receiver: Receiver, status: int, kind: str, result: str,
               headers: Mapping[str, str] | None = None, text: str = "") -> Response:
        if result:
            observer.webhook_event(receiver.name, kind, result)
        log.debug("webhook source=%s kind=%s result=%s status=%d", receiver.name, kind, result,
                  status)
        if status == 204:
            return Response(status_code=204, headers=headers)
        return PlainTextResponse(text, status_code=status, headers=headers)

    async def connect_events(request: Request) -> Response:
        receiver = receivers.get(request.path_params["source"])
        if receiver is None or (receiver.ring is None and receiver.basic is None):
            return PlainTextResponse("", status_code=404)
        received_at = clock()
        ok_status = 204 if receiver.basic is not None else 200
        try:
            if receiver.basic is not None and not basic_auth_ok(
                    request.headers.get("authorization"), *receiver.basic):
                raise _Rejected(401, "unauthorized", headers={
                    "WWW-Authenticate": 'Basic realm="openfinance-webhooks"'})
            body = await _read_body(request, max_body_bytes, read_timeout)
            if receiver.ring is not None:
                if not receiver.ring.verify(body, request.headers.get(SIGNATURE_HEADER),
                                            clock()):
                    raise _Rejected(401, "bad_signature")
                delivery = events.finicity_connect(body)
            else:
                delivery = events.mx(body)
            status, kind, result = await accept(receiver, delivery, received_at, ok_status)
        except Malformed as exc:
            return answer(receiver, 400 if receiver.ring is not None else 204, exc.kind,
                          "malformed")
        except _Rejected as r:
            return answer(receiver, r.status, r.kind, r.result, r.headers)
        return answer(receiver, status, kind, result)

    async def txpush(request: Request) -> Response:
        receiver = receivers.get(request.path_params["source"])
        if receiver is None or receiver.txpush_token is None:
            return PlainTextResponse("", status_code=404)
        if not token_ok(request.path_params["token"], receiver.txpush_token):
            return answer(receiver, 404, "unknown", "unauthorized")
        received_at = clock()
        code = request.query_params.get("txpush_verification_code")
        if code is not None or request.method == "GET":
            if code is None or not _VERIFICATION_CODE.match(code):
                return answer(receiver, 400, "txpush_verification", "malformed")
            return answer(receiver, 200, "txpush_verification", "accepted", text=code,
                          headers={"X-Content-Type-Options": "nosniff"})
        try:
            body = await _read_body(request, max_body_bytes, read_timeout)
            status, kind, result = await accept(receiver, events.txpush(body), received_at, 200)
        except Malformed as exc:
            return answer(receiver, 200, exc.kind, "malformed")
        except _Rejected as r:
            return answer(receiver, r.status, r.kind, r.result, r.headers)
        return answer(receiver, status, kind, result)

    return Starlette(routes=[
        Route("/webhooks/{source}", connect_events, methods=["POST"]),
        Route("/webhooks/{source}/txpush/{token}", txpush, methods=["GET", "POST"]),
    ])


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
