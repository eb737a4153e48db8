"""The delivery worker: sends due requests from the outbox to the partner's endpoint.

Each POST carries ``Idempotency-Key: <request id>`` (the same on every retry and after a
restart) and ``X-OpenFinance-Signature``. At most ``max_concurrency`` requests are in flight;
while a sweep of this agent runs, at most ``sweep_deliveries_per_second`` start per second
(the sweep's writer thread waits for the GIL while the event loop runs deliveries:
docs/remediation.md, "Benchmark").
A failure is retried after a full-jitter exponential backoff, or after ``Retry-After`` when
the receiver sends one (429, 503); 410 Gone stops retries for that request; a request still
undelivered ``retry_for`` after its creation is dead-lettered. A delivered request is marked
so before anything else, and is never sent again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

from exporter import __version__
from exporter.aio import wait_for_event
from exporter.remediation.config import RemediationConfig
from exporter.remediation.episodes import KIND_OTP
from exporter.remediation.observer import RemediationObserver
from exporter.remediation.signing import SIGNATURE_HEADER, sign
from exporter.sources.client import env_proxy
from exporter.sources.transport import AiohttpTransport, Http11Transport
from exporter.state.remediation import OutboxRow

log = logging.getLogger(__name__)

Call = Callable[..., Awaitable]
"""Runs a store method by name on the loop's store thread: ``await call("due", now, 10, ())``."""
LinkFor = Callable[[OutboxRow], Awaitable[str | None]]


class Endpoint:
    """The partner's endpoint: POSTs a raw body, returns (status, headers with lower-case
    names). Our HTTP/1.1 keep-alive pool (the sources' :class:`Http11Transport`, called
    without httpx's request and response objects), one connection per concurrent delivery;
    aiohttp's pool behind an ``HTTPS_PROXY``/``HTTP_PROXY``; or a given httpx client (tests'
    ``MockTransport``), which its owner closes."""

    def __init__(self, cfg: RemediationConfig, client: httpx.AsyncClient | None = None):
        self._url = str(cfg.endpoint)
        self._timeout = httpx.Timeout(cfg.timeout).as_dict()
        self._client = client
        self._own = client is None
        self._transport: Http11Transport | None = None
        if client is None:
            proxy = env_proxy(self._url)
            if proxy is None:
                self._transport = Http11Transport(self._url, max_connections=cfg.max_concurrency)
                self._target = httpx.URL(self._url).raw_path.decode("ascii")
            else:
                self._client = httpx.AsyncClient(
                    transport=AiohttpTransport(max_connections=cfg.max_concurrency, proxy=proxy),
                    follow_redirects=False)

    async def post(self, raw: bytes, headers: dict[str, str]) -> tuple[int, Mapping[str, str]]:
        if self._transport is not None:
            answer = await self._transport.exchange("POST", self._target, headers, raw,
                                                    self._timeout)
            return answer.status_code, answer.headers
        assert self._client is not None
        resp = await self._client.post(self._url, content=raw, headers=headers,
                                       timeout=self._timeout["read"])
        return resp.status_code, resp.headers

    async def aclose(self) -> None:
        if self._transport is not None:
            await self._transport.aclose()
        elif self._own and self._client is not None:
            await self._client.aclose()


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
class Settlement:
    """The outcome of one attempt, written back with the rest of its batch: ``result`` is
    the metric's label; ``at`` is when it happened, or for ``retried`` the next attempt."""

    row: OutboxRow
    result: str
    at: float
    error: str = ""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one attempt means: ``delivered``, ``gone`` (410: stop) or ``retry``."""

    outcome: str
    wait: float | None = None
    error: str = ""


def judge(status: int | None, headers: Mapping[str, str] | None, now: float,
          error: str = "") -> Verdict:
    if status is None:
        return Verdict("retry", None, error or "no response")
    if 200 <= status < 300:
        return Verdict("delivered")
    if status == 410:
        return Verdict("gone", None, "410 Gone")
    wait = retry_after(headers.get("retry-after") if headers is not None else None, now)
    return Verdict("retry", wait if status in (429, 503) else None, f"HTTP {status}")


PACE_STEP = 5.0
"""While paced, a batch holds ``rate × PACE_STEP`` requests: one settle transaction per
``PACE_STEP`` seconds, few commits to the file the sweep writes (SQLite resets a
connection's page cache when another one wrote; measured within noise, still cheaper)."""


class DeliveryWorker:
    def __init__(self, cfg: RemediationConfig, secret: bytes, call: Call, endpoint: Endpoint,
                 clock: Callable[[], float], observer: RemediationObserver, link_for: LinkFor,
                 rand: Callable[[], float] = random.random, poll: float = 5.0,
                 pace: Callable[[], float | None] = lambda: None,
                 monotonic: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.cfg = cfg
        self.secret = secret
        self.call = call
        self.endpoint = endpoint
        self.pace = pace
        """deliveries per second allowed now (None: as fast as ``max_concurrency`` goes)"""
        self.monotonic = monotonic
        self.sleep = sleep
        self._next_start = 0.0
        """while paced: when the next request may start (on ``monotonic``'s clock)"""
        self.clock = clock
        self.observer = observer
        self.link_for = link_for
        self.rand = rand
        self.poll = poll
        self.in_flight: set[str] = set()
        self._agent = f"openfinance-exporter/{__version__}"
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(cfg.max_concurrency)

    def wake(self) -> None:
        self._wake.set()

    async def run_once(self) -> int:
        """Send every request due now (bounded concurrency); returns how many were tried.

        Outcomes are written back per batch, in one transaction: a crash before that
        re-sends the batch with the same idempotency keys, which receivers deduplicate.
        While :attr:`pace` gives a rate, batches hold ``rate × PACE_STEP`` requests and each
        request waits for its turn (:meth:`_turn`); at rate 0 nothing new is fetched (``run``
        tries again when woken or after ``poll``)."""
        total = 0
        while True:
            rate = self.pace()
            limit = self.cfg.max_concurrency * 4
            if rate is not None:
                if rate <= 0:
                    return total
                limit = max(1, min(limit, math.ceil(rate * PACE_STEP)))
            batch = await self.call("due", self.clock(), limit, tuple(self.in_flight))
            if not batch:
                return total
            total += len(batch)
            self.in_flight.update(row.id for row in batch)
            try:
                settled = await asyncio.gather(*(self._guarded(row) for row in batch))
                done = [s for s in settled if s is not None]
                delivered = await self.call("settle", done)
            finally:
                self.in_flight.difference_update(row.id for row in batch)
            self._report(done, delivered)

    async def _turn(self) -> None:
        """While paced, one request starts every ``1 / rate`` seconds, evenly (a sweep that
        begins mid-batch paces the rest of that batch too); at rate 0, none until the rate
        changes. Unpaced: at once."""
        monotonic = self.monotonic or asyncio.get_running_loop().time
        while True:
            rate = self.pace()
            if rate is None:
                return
            now = monotonic()
            if rate > 0:
                start = max(self._next_start, now)
                self._next_start = start + 1.0 / rate
                if start > now:
                    await self.sleep(start - now)
                return
            await self.sleep(0.5)

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

    async def _guarded(self, row: OutboxRow) -> Settlement | None:
        try:
            async with self._slots:
                await self._turn()
                return await self.attempt(row)
        except Exception:
            log.exception("remediation delivery failed unexpectedly source=%s", row.source)
            return None

    async def attempt(self, row: OutboxRow) -> Settlement:
        """One POST of ``row``; returns what to write back (nothing is written here)."""
        body = json.loads(row.body)
        if row.kind != KIND_OTP and self.cfg.link != "none":
            try:
                link = await self.link_for(row)
            except Exception as exc:
                log.warning("fix link not available, delivery postponed source=%s error=%s",
                            row.source, type(exc).__name__)
                return self._settle(row, Verdict("retry", None, f"link: {type(exc).__name__}"))
            if link:
                body["link"] = link
        raw = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": row.id,
                   SIGNATURE_HEADER: sign(self.secret, raw, int(self.clock())),
                   "User-Agent": self._agent}
        try:
            status, answer_headers = await self.endpoint.post(raw, headers)
            verdict = judge(status, answer_headers, self.clock())
        except httpx.HTTPError as exc:
            verdict = judge(None, None, self.clock(), type(exc).__name__)
        return self._settle(row, verdict)

    def _settle(self, row: OutboxRow, verdict: Verdict) -> Settlement:
        now = self.clock()
        if verdict.outcome == "delivered":
            return Settlement(row, "delivered", now)
        if verdict.outcome == "gone":
            return Settlement(row, "failed", now, verdict.error)
        wait = verdict.wait
        if wait is None:
            wait = backoff_delay(row.attempts + 1, self.cfg.backoff_base, self.cfg.backoff_max,
                                 self.rand)
        if now + wait > row.created_at + self.cfg.retry_for:
            return Settlement(row, "dead", now, verdict.error)
        return Settlement(row, "retried", now + wait, verdict.error)

    def _report(self, settled: list[Settlement], delivered: set[str]) -> None:
        counts: Counter[str] = Counter()
        for s in settled:
            row = s.row
            if s.result == "delivered" and row.id not in delivered:
                continue  # cancelled while in flight: counted nowhere
            self.observer.fix_request(row.source, row.provider, row.kind, s.result)
            counts[s.result] += 1
            if s.result == "dead":
                log.error("fix request dead-lettered after %d attempts source=%s last_error=%s",
                          row.attempts + 1, row.source, s.error)
            elif s.result == "failed":
                log.warning("fix request refused for good (410) source=%s", row.source)
        if counts:
            log.info("fix requests sent %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())))
