"""Webhooks the sandbox sends when state changes, shaped and authenticated like the real ones.

Off unless ``scenario.webhooks`` (or ``PUT /sandbox/webhooks``) names a URL, except for a
Finicity Connect Fix link generated with its own ``webhook``, which gets its session's
``done`` event as in reality.

What is sent (facts and uncertainties: reference/upstream-apis.md, Part E):

- Finicity, to ``finicity_url``: Connect-style events ``{"customerId", "eventType",
  "eventId", "payload"}`` (plus ``webhookData`` when the Fix link carried some), compact JSON
  as the real sender writes it, signed with ``X-Finicity-Signature`` = lower-case hex
  HMAC-SHA256 of the raw body keyed with ``finicity_secret`` (default: the sandbox's partner
  secret). ``unableToConnect`` (``payload: {institutionId, code}``) when a login enters or
  changes a non-ok code at a night's aggregation; ``done`` (``payload: {}``) when a Connect
  Fix completes, to the link's ``webhook`` if it had one, else ``finicity_url``. A login that
  recovers on its own sends nothing (Finicity pushes no such event: polls see it).
  ``eventId`` = ``<epoch ms>-<24 hex>``, unique per event.
- MX, to ``mx_url``, with HTTP Basic ``mx_username``/``mx_password`` when set:
  ``CONNECTION_STATUS`` (``{"action": "CHANGED", "type": "CONNECTION_STATUS",
  "connection_status", "connection_status_id", "connection_status_message", "member_guid",
  "user_guid"}``) on entry into an end-user-actionable status (CHALLENGED, DENIED, EXPIRED,
  IMPAIRED, IMPEDED, LOCKED, PREVENTED, REJECTED), and a member webhook (``{"action":
  "updated", "member": {…, epoch-integer ``aggregated_at``, ``revision``}}``; MX's envelope is
  inferred) on every connection_status change, including back to CONNECTED after a fix.
  ``X-CALLBACK-PAYLOAD`` is echoed when the widget URL request carried one. MX has no event
  id.

Changes are found by comparing each connection's code with the last one announced:
:meth:`WebhookEmitter.sync` runs after ``POST /sandbox/advance`` and, in auto mode, at every
night boundary (a task started with the first request). Delivery is at least once: a
transport error or a non-2xx answer is retried (``max_attempts`` in all, backoff
``retry_seconds`` doubling up to ``retry_max_seconds``), then counted as failed;
``redeliver_once`` sends every delivered event a second time, byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import secrets
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from exporter.sandbox.credentials import FINICITY_PARTNER_SECRET
from exporter.sandbox.fleet import MX_STATUS_IDS, Fleet, ProviderSim, mx_status_message
from exporter.sandbox.ids import customer_id, institution_guid, login_id, member_guid, user_guid
from exporter.sandbox.scenario import WebhooksConfig

log = logging.getLogger(__name__)

# MX sends CONNECTION_STATUS only on entry into one of these (docs.mx.com, connection-status).
MX_ACTIONABLE = frozenset({"CHALLENGED", "DENIED", "EXPIRED", "IMPAIRED", "IMPEDED", "LOCKED",
                           "PREVENTED", "REJECTED"})
_THREAD_ABOVE = 50_000  # connections: compare codes in a worker thread above this


def finicity_signature(secret: str, body: bytes) -> str:
    """``X-Finicity-Signature``: hex HMAC-SHA256 of the raw body keyed with the partner secret."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def compact_json(payload: Any) -> bytes:
    """JSON as the real senders write it (``JSON.stringify``: no spaces, UTF-8 as is)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class Delivery:
    """One event to one URL, until delivered (twice with ``redeliver_once``) or given up."""

    provider: str
    kind: str
    url: str
    body: bytes
    headers: dict[str, str]
    summary: dict[str, Any]  # what GET /sandbox/webhooks shows (synthetic ids, no secrets)
    attempts: int = 0
    deliveries: int = 0
    status: str = "pending"
    errors: list[str] = field(default_factory=list)


class WebhookEmitter:
    """Finds state changes, builds the events and delivers them in the background."""

    def __init__(self, fleet: Fleet, config: WebhooksConfig | None,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.fleet = fleet
        self.clock = fleet.clock
        self._transport = transport
        self.counters: Counter[str] = Counter()
        self.recent: deque[Delivery] = deque(maxlen=1000)
        self._pending = 0
        self._idle: asyncio.Event | None = None
        self._queue: asyncio.Queue[Delivery] | None = None
        self._tasks: list[asyncio.Task] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._client: httpx.AsyncClient | None = None
        self._announced: dict[str, list[str]] = {}
        self._revision = 0  # MX member webhook revision
        self.config: WebhooksConfig | None = None
        self.settings = WebhooksConfig()
        # What the night timer runs at each boundary (the app adds the users' repairs).
        self.on_night: Callable[[], Awaitable[Any]] = self.sync
        self.configure(config)

    # -- configuration -------------------------------------------------------------------

    def configure(self, config: WebhooksConfig | None) -> None:
        """Use ``config`` from now on (None: send nothing unless a Fix link names a URL).
        The codes announced so far are re-read, so only later changes produce events."""
        self.config = config
        self.settings = config or WebhooksConfig()
        self._announced = {}
        if self.config is not None and (config.finicity_url or config.mx_url):
            self._announced = {sim.provider: self._codes(sim, self.clock.night)
                               for sim in (self.fleet.finicity, self.fleet.mx)}

    @property
    def watching(self) -> bool:
        return bool(self._announced)

    def public_config(self) -> dict[str, Any] | None:
        """The configuration without secrets (for GET /sandbox/webhooks)."""
        if self.config is None:
            return None
        out = self.config.model_dump()
        for secret in ("finicity_secret", "mx_password"):
            out[secret] = None if out[secret] is None else "<set>"
        return out

    # -- finding changes -----------------------------------------------------------------

    def _login_code(self, sim: ProviderSim, k: int, night: int) -> str:
        """Connection ``k``'s first non-ok account code on ``night``, else ok."""
        for role in sim.account_roles(k):
            code = self.fleet.current_code_on(sim, k, night, role)
            if code != sim.ok_code:
                return code
        return sim.ok_code

    def _codes(self, sim: ProviderSim, night: int) -> list[str]:
        return [self._login_code(sim, k, night) for k in range(sim.connections)]

    async def sync(self) -> int:
        """Announce every connection whose code changed since it was last announced; returns
        the number of events queued."""
        if not self.watching:
            return 0
        night = self.clock.night
        queued = 0
        for sim in (self.fleet.finicity, self.fleet.mx):
            if sim.connections > _THREAD_ABOVE:
                now = await asyncio.to_thread(self._codes, sim, night)
            else:
                now = self._codes(sim, night)
            before = self._announced[sim.provider]
            for k, code in enumerate(now):
                if code != before[k]:
                    queued += self._announce_change(sim, k, before[k], code)
            self._announced[sim.provider] = now
        if queued:
            log.info("sandbox webhooks: night=%d events=%d", night, queued)
        return queued

    def _announce_change(self, sim: ProviderSim, k: int, old: str, new: str) -> int:
        cfg = self.config
        assert cfg is not None
        if sim.provider == "finicity":
            if new == sim.ok_code or not cfg.finicity_url:
                return 0
            inst = sim.institutions[sim.conn_inst[k]]
            code: int | str = int(new) if new.isdigit() else new
            self.finicity_event(cfg.finicity_url, customer_id(sim.conn_unit[k]),
                                "unableToConnect", {"institutionId": inst.id, "code": code},
                                login=k)
            return 1
        if not cfg.mx_url:
            return 0
        sent = 0
        if new in MX_ACTIONABLE:
            self.mx_connection_status(k, new)
            sent += 1
        self.mx_member(k, new)
        return sent + 1

    def fixed(self, provider: str, k: int, callback_payload: str | None = None) -> None:
        """A Connect Fix repaired connection ``k``: announce it (MX member webhook) and take
        its code as announced, so the next night reports only what changes after it."""
        sim = self.fleet.sim(provider)
        if self.watching:
            code = self._login_code(sim, k, self.clock.night)
            self._announced[provider][k] = code
            if provider == "mx" and self.config is not None and self.config.mx_url:
                self.mx_member(k, code, callback_payload)

    # -- building events -----------------------------------------------------------------

    def finicity_event(self, url: str, customer: str, event_type: str,
                       payload: dict[str, Any], *, login: int | None = None,
                       webhook_data: dict[str, Any] | None = None,
                       extra_headers: dict[str, str] | None = None) -> str:
        """Queue one signed Connect event; returns its ``eventId``."""
        event_id = f"{int(self.clock.now() * 1000)}-{secrets.token_hex(12)}"
        envelope: dict[str, Any] = {"customerId": customer, "eventType": event_type,
                                    "eventId": event_id, "payload": payload}
        if webhook_data:
            envelope["webhookData"] = webhook_data
        body = compact_json(envelope)
        secret = self.settings.finicity_secret or FINICITY_PARTNER_SECRET
        headers = {**(extra_headers or {}), "Content-Type": "application/json",
                   "X-Finicity-Signature": finicity_signature(secret, body)}
        self._enqueue(Delivery("finicity", event_type, url, body, headers, {
            "provider": "finicity", "kind": event_type, "event_id": event_id,
            "owner_id": customer,
            "login_id": None if login is None else str(login_id(login)),
            "code": payload.get("code")}))
        return event_id

    def _mx_headers(self, callback_payload: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        cfg = self.settings
        if cfg.mx_username is not None:
            raw = f"{cfg.mx_username}:{cfg.mx_password or ''}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        if callback_payload:
            headers["X-CALLBACK-PAYLOAD"] = callback_payload
        return headers

    def _mx_send(self, kind: str, k: int, status: str, payload: dict[str, Any],
                 callback_payload: str | None) -> None:
        cfg = self.config
        if cfg is None or not cfg.mx_url:
            return
        sim = self.fleet.mx
        self._enqueue(Delivery("mx", kind, cfg.mx_url, compact_json(payload),
                               self._mx_headers(callback_payload), {
            "provider": "mx", "kind": kind, "event_id": None,
            "owner_id": user_guid(sim, sim.conn_unit[k]), "login_id": member_guid(sim, k),
            "code": status}))

    def mx_connection_status(self, k: int, status: str,
                             callback_payload: str | None = None) -> None:
        sim = self.fleet.mx
        inst = sim.institutions[sim.conn_inst[k]]
        self._mx_send("CONNECTION_STATUS", k, status, {
            "action": "CHANGED", "type": "CONNECTION_STATUS", "connection_status": status,
            "connection_status_id": MX_STATUS_IDS.get(status),
            "connection_status_message": mx_status_message(status, inst.name),
            "member_guid": member_guid(sim, k), "user_guid": user_guid(sim, sim.conn_unit[k]),
        }, callback_payload)

    def mx_member(self, k: int, status: str, callback_payload: str | None = None) -> None:
        sim = self.fleet.mx
        inst = sim.institutions[sim.conn_inst[k]]
        role, night, unit = sim.conn_role[k], self.clock.night, sim.conn_unit[k]
        attempt_night, _ = sim.last_attempt(k, night, role)
        success_night = sim.last_success(k, night, role)
        self._revision += 1
        self._mx_send("MEMBER", k, status, {"action": "updated", "member": {
            "aggregated_at": int(sim.attempt_time(k, attempt_night, role, self.clock)),
            "connection_status": status,
            "connection_status_id": MX_STATUS_IDS.get(status),
            "connection_status_message": mx_status_message(status, inst.name),
            "guid": member_guid(sim, k),
            "institution_code": inst.id,
            "institution_guid": institution_guid(sim, inst.rank),
            "is_being_aggregated": False,
            "successfully_aggregated_at": int(sim.attempt_time(k, success_night, role,
                                                               self.clock)),
            "user_guid": user_guid(sim, unit),
            "user_id": f"partner-user-{unit:06d}",
            "revision": self._revision,
        }}, callback_payload)

    # -- delivery ------------------------------------------------------------------------

    def _enqueue(self, delivery: Delivery) -> None:
        self._start()
        assert self._queue is not None and self._idle is not None
        self._pending += 1
        self._idle.clear()
        self.counters["queued"] += 1
        self.recent.append(delivery)
        self._queue.put_nowait(delivery)

    def _start(self) -> None:
        if self._queue is not None:
            return
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks.append(asyncio.get_running_loop().create_task(
            self._deliver_forever(), name="sandbox-webhooks"))

    def start_watching(self) -> None:
        """In auto mode, run :attr:`on_night` at every night boundary (needs a running loop;
        idempotent)."""
        if self.clock.night_seconds <= 0 or any(t.get_name() == "sandbox-webhooks-nights"
                                                for t in self._tasks):
            return
        self._tasks.append(asyncio.get_running_loop().create_task(
            self._watch_nights(), name="sandbox-webhooks-nights"))

    async def _watch_nights(self) -> None:
        while True:
            next_at = self.clock.next_night_at()
            if next_at is None:
                return
            await asyncio.sleep(max(0.05, next_at - self.clock.now() + 0.05))
            try:
                await self.on_night()
            except Exception:  # a bug here must not stop the nights
                log.exception("sandbox: the night's webhooks or repairs failed")

    async def _deliver_forever(self) -> None:
        assert self._queue is not None
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            except Exception:  # never lose the worker to one bad event
                log.exception("sandbox webhooks: delivery failed")
                delivery.status = "failed"
                self.counters["failed"] += 1
                self._finish()

    async def _deliver(self, d: Delivery) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport,
                                             timeout=self.settings.timeout_seconds,
                                             headers={"User-Agent": "openfinance-sandbox"})
        d.attempts += 1
        try:
            response = await self._client.post(d.url, content=d.body, headers=d.headers)
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        if error is None:
            d.deliveries += 1
            self.counters["delivered"] += 1
            if self.settings.redeliver_once and d.deliveries == 1:
                self.counters["redelivered"] += 1
                self._queue.put_nowait(d)  # the same bytes, the same eventId
                return
            d.status = "delivered"
            self._finish()
            return
        d.errors.append(error)
        if d.attempts >= self.settings.max_attempts:
            d.status = "failed"
            self.counters["failed"] += 1
            log.warning("sandbox webhooks: gave up provider=%s kind=%s attempts=%d error=%s",
                        d.provider, d.kind, d.attempts, error)
            self._finish()
            return
        self.counters["retried"] += 1
        delay = min(self.settings.retry_seconds * 2 ** (d.attempts - 1),
                    self.settings.retry_max_seconds)
        loop = asyncio.get_running_loop()
        timer = loop.call_later(delay, self._retry, d)
        self._timers.add(timer)

    def _retry(self, d: Delivery) -> None:
        now = asyncio.get_running_loop().time()
        self._timers = {t for t in self._timers if t.when() > now}
        if self._queue is not None:
            self._queue.put_nowait(d)

    def _finish(self) -> None:
        self._pending -= 1
        if self._pending == 0 and self._idle is not None:
            self._idle.set()

    @property
    def pending(self) -> int:
        """Events queued, in flight or waiting for a retry."""
        return self._pending

    async def drain(self) -> None:
        """Wait until every queued event is delivered or given up (tests)."""
        if self._idle is not None:
            await self._idle.wait()

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._queue = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def stats_json(self) -> dict[str, Any]:
        return {
            "config": self.public_config(),
            "watching": self.watching,
            "pending": self._pending,
            "counters": dict(sorted(self.counters.items())),
            "recent": [{**d.summary, "url": d.url, "status": d.status, "attempts": d.attempts,
                        "deliveries": d.deliveries, "errors": d.errors[-3:]}
                       for d in self.recent],
        }
