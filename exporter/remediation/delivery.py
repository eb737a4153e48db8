"""The delivery worker: sends due requests from the outbox to the partner's endpoint.

Each POST carries ``Idempotency-Key: <request id>`` (the same on every retry and after a
restart) and ``X-OpenFinance-Signature``. At most ``max_concurrency`` requests are in flight.
A failure is retried after a full-jitter exponential backoff, or after ``Retry-After`` when
the receiver sends one (429, 503); 410 Gone stops retries for that request; a request still
undelivered ``retry_for`` after its creation is dead-lettered. A delivered request is marked
so before anything else, and is never sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from exporter import __version__
from exporter.remediation.config import RemediationConfig
from exporter.remediation.episodes import KIND_OTP
from exporter.remediation.observer import RemediationObserver
from exporter.remediation.signing import SIGNATURE_HEADER, sign
from exporter.remediation.store import DEAD, FAILED, OutboxRow

log = logging.getLogger(__name__)

Call = Callable[..., Awaitable]
"""Runs a store method by name on the loop's store thread: ``await call("due", now, 10, ())``."""
LinkFor = Callable[[OutboxRow], Awaitable[str | None]]


async def wait_for_event(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set or ``timeout`` passes; clears it."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout)
    event.clear()


def backoff_delay(failures: int, base: float, cap: float, rand: Callable[[], float]) -> float:
    """Full jitter: uniform in [0, min(cap, base · 2^(failures − 1))] after ``failures`` ≥ 1."""
    return rand() * min(cap, base * 2 ** max(failures - 1, 0))


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt means: ``delivered``, ``gone`` (410: stop) or ``retry``."""

    outcome: str
    wait: float | None = None
    error: str = ""


def judge(status: int | None, headers: httpx.Headers | None, now: float, error: str = "") -> Verdict:
    if status is None:
        return Verdict("retry", None, error or "no response")
    if 200 <= status < 300:
        return Verdict("delivered")
    if status == 410:
        return Verdict("gone", None, "410 Gone")
    wait = retry_after(headers.get("retry-after") if headers is not None else None, now)
    return Verdict("retry", wait if status in (429, 503) else None, f"HTTP {status}")


class DeliveryWorker:
    def __init__(self, cfg: RemediationConfig, secret: bytes, call: Call, client: httpx.AsyncClient,
                 clock: Callable[[], float], observer: RemediationObserver, link_for: LinkFor,
                 rand: Callable[[], float] = random.random, poll: float = 5.0):
        self.cfg = cfg
        self.secret = secret
        self.call = call
        self.client = client
        self.clock = clock
        self.observer = observer
        self.link_for = link_for
        self.rand = rand
        self.poll = poll
        self.in_flight: set[str] = set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(cfg.max_concurrency)

    def wake(self) -> None:
        self._wake.set()

    async def run_once(self) -> int:
        """Send every request due now (bounded concurrency); returns how many were tried."""
        total = 0
        while True:
            batch = await self.call("due", self.clock(), self.cfg.max_concurrency * 4,
                                    tuple(self.in_flight))
            if not batch:
                return total
            total += len(batch)
            await asyncio.gather(*(self._guarded(row) for row in batch))

    async def run(self) -> None:
        """Forever: send what is due, then sleep until the next due time, a wake-up, or
        ``poll`` seconds (a ``remediation release`` from another process shows up then)."""
        while True:
            try:
                await self.run_once()
                next_due = await self.call("next_due")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("remediation delivery loop failed; retrying")
                next_due = None
            wait = self.poll if next_due is None else min(max(next_due - self.clock(), 0.0), self.poll)
            await wait_for_event(self._wake, max(wait, 0.05))

    async def _guarded(self, row: OutboxRow) -> None:
        self.in_flight.add(row.id)
        try:
            async with self._slots:
                await self.deliver(row)
        except Exception:
            log.exception("remediation delivery failed unexpectedly source=%s", row.source)
        finally:
            self.in_flight.discard(row.id)

    async def deliver(self, row: OutboxRow) -> str:
        """One attempt; returns the result label it counted."""
        body = json.loads(row.body)
        if row.kind != KIND_OTP and self.cfg.link != "none":
            try:
                link = await self.link_for(row)
            except Exception as exc:
                log.warning("fix link not available, delivery postponed source=%s error=%s",
                            row.source, type(exc).__name__)
                return await self._failed(row, Verdict("retry", None, f"link: {type(exc).__name__}"))
            if link:
                body["link"] = link
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        t = int(self.clock())
        headers = {"Content-Type": "application/json", "Idempotency-Key": row.id,
                   SIGNATURE_HEADER: sign(self.secret, raw, t),
                   "User-Agent": f"openfinance-exporter/{__version__}"}
        try:
            resp = await self.client.post(self.cfg.endpoint, content=raw, headers=headers,
                                          timeout=self.cfg.timeout)
            verdict = judge(resp.status_code, resp.headers, self.clock())
        except httpx.HTTPError as exc:
            verdict = judge(None, None, self.clock(), type(exc).__name__)
        if verdict.outcome == "delivered":
            if await self.call("delivered", row.id, row.episode_id, self.clock()):
                self.observer.request(row.source, row.provider, row.kind, "delivered")
                log.info("fix request delivered source=%s kind=%s attempts=%d",
                         row.source, row.kind, row.attempts + 1)
            return "delivered"
        return await self._failed(row, verdict)

    async def _failed(self, row: OutboxRow, verdict: Verdict) -> str:
        now = self.clock()
        if verdict.outcome == "gone":
            await self.call("finish", row.id, FAILED, now, verdict.error)
            log.warning("fix request refused for good (410) source=%s", row.source)
            result = "failed"
        else:
            failures = row.attempts + 1
            wait = verdict.wait
            if wait is None:
                wait = backoff_delay(failures, self.cfg.backoff_base, self.cfg.backoff_max, self.rand)
            if now + wait > row.created_at + self.cfg.retry_for:
                await self.call("finish", row.id, DEAD, now, verdict.error)
                log.error("fix request dead-lettered after %d attempts source=%s last_error=%s",
                          failures, row.source, verdict.error)
                result = "dead"
            else:
                await self.call("retry_at", row.id, now + wait, verdict.error)
                log.info("fix request retry source=%s in=%.0fs error=%s",
                         row.source, wait, verdict.error)
                result = "retried"
        self.observer.request(row.source, row.provider, row.kind, result)
        return result
