"""Shared upstream behaviour for every source: polite HTTP and parsing of loose field types.

One :class:`UpstreamClient` per source bounds concurrency, rate-limits with a token bucket and
retries transient failures with exponential backoff and full jitter, honouring
``Retry-After``. Every exchange is reported to the observer under its *route template*, so
no customer or account id ever reaches a metric label. Sleep, clock and random are injected
so that tests run without real waiting.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from exporter.catalog import normalise_code
from exporter.config import HttpConfig, ShardConfig
from exporter.sources.base import UpstreamObserver

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

# Epoch seconds outside this window are treated as garbage (0, milliseconds, year 3000 …).
EARLIEST_PLAUSIBLE_TS = 946_684_800.0  # 2000-01-01T00:00:00Z
FUTURE_TOLERANCE = 7 * 86_400.0


# --------------------------------------------------------------------------- errors


class UpstreamError(Exception):
    """A request that did not produce a usable answer (after retries, where retrying made sense).

    ``route`` is the route template; messages never contain filled-in ids.
    """

    def __init__(self, message: str, *, route: str, status: str, code: int | None = None):
        super().__init__(message)
        self.route = route
        self.status = status
        self.code = code


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a non-success HTTP status."""

    def __init__(self, route: str, http_status: int, body: ErrorBody):
        detail = f" (code {body.code}: {body.message})" if body.code is not None else ""
        super().__init__(
            f"{route} answered HTTP {http_status}{detail}",
            route=route, status=str(http_status), code=body.code,
        )
        self.http_status = http_status
        self.body = body


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be reached or did not answer in time."""


class MalformedResponse(UpstreamError):
    """The upstream answered 2xx with a body that is not the JSON we expect."""


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The useful part of an error answer: Finicity ``{code, message}``, MX ``{error: …}``."""

    code: int | None = None
    message: str | None = None


def parse_error_body(response: httpx.Response) -> ErrorBody:
    """Read ``code`` leniently (``10023``, ``"10023"``, ``"10023,"``); never raise."""
    try:
        data = response.json()
    except ValueError:
        return ErrorBody()
    if not isinstance(data, dict):
        return ErrorBody()
    normalised = normalise_code("finicity", data.get("code"))
    code = int(normalised) if normalised is not None else None
    message = data.get("message")
    error = data.get("error")
    if message is None and isinstance(error, dict):
        message = error.get("message")
    elif message is None and isinstance(error, str):
        message = error
    return ErrorBody(code, str(message)[:200] if message is not None else None)


# --------------------------------------------------------------------------- loose field types


def parse_id(raw: object) -> str | None:
    """An id sent as a string or a number, as a string; None when absent or not an id."""
    if isinstance(raw, bool) or raw is None:
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    return None


def parse_timestamp(raw: object, *, now: float) -> float | None:
    """Epoch seconds from an epoch int/float, an epoch string or an ISO-8601 string.

    Absent values (None, "") give None; values that are present but unparseable or absurd
    (before 2000, more than a week ahead, milliseconds) raise ``ValueError``.
    """
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if isinstance(raw, bool):
        raise ValueError("a boolean is not a date")
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            value = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError as exc:
                raise ValueError("not an epoch or ISO-8601 date") from exc
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            value = parsed.timestamp()
    else:
        raise ValueError("not a date")
    if not math.isfinite(value) or not EARLIEST_PLAUSIBLE_TS <= value <= now + FUTURE_TOLERANCE:
        raise ValueError("date out of the plausible range")
    return value


def in_shard(unit_id: str, shard: ShardConfig) -> bool:
    """Stable across processes and versions (unlike ``hash()``): blake2b of the id, mod count."""
    if shard.count == 1:
        return True
    digest = hashlib.blake2b(unit_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard.count == shard.index


class RecordParser:
    """Turns loose upstream values into record fields, counting what it has to drop."""

    def __init__(self, source: str, observer: UpstreamObserver, clock: Clock):
        self.source = source
        self._observer = observer
        self._clock = clock

    def invalid(self, reason: str) -> None:
        self._observer.invalid_record(self.source, reason)

    def timestamp(self, raw: object) -> float | None:
        """A plausible timestamp, or None (counted as ``invalid_date`` when it was garbage)."""
        try:
            return parse_timestamp(raw, now=self._clock())
        except ValueError:
            self.invalid("invalid_date")
            return None


# --------------------------------------------------------------------------- rate limit


class TokenBucket:
    """``rate`` requests per second with bursts up to ``burst``, on the injected clock and sleep.

    A caller takes a token at once and, when the bucket is in debt, sleeps until its token
    would have been refilled: no polling loop, so a fake clock cannot make it spin.
    Hand-written because library limiters read the event loop's own clock.
    """

    def __init__(self, rate: float, burst: int, clock: Clock, sleep: Sleep):
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()

    async def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._tokens -= 1
        if self._tokens < 0:
            await self._sleep(-self._tokens / self._rate)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP date, in seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


# --------------------------------------------------------------------------- the client


class UpstreamClient:
    """An ``httpx.AsyncClient`` with the agent's manners: timeouts, limits, retries, reporting.

    ``clock`` is wall time (for ``Retry-After`` dates), ``monotonic`` drives the rate limit and
    durations; inject both, with ``sleep``, to test without waiting.

    ``is_outcome_code`` says whether an error ``code`` in a 5xx body is an aggregation outcome
    (Finicity sends those as HTTP 500): such answers are final, not retried.
    """

    def __init__(
        self,
        *,
        source: str,
        base_url: str,
        http: HttpConfig,
        observer: UpstreamObserver,
        headers: Mapping[str, str] | None = None,
        auth: httpx.Auth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        is_outcome_code: Callable[[int], bool] = lambda code: False,
    ):
        self.source = source
        self._cfg = http
        self._observer = observer
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._random = random
        self._is_outcome_code = is_outcome_code
        self._semaphore = asyncio.Semaphore(http.max_concurrency)
        self._bucket = TokenBucket(
            http.rate_limit_per_second, http.rate_limit_burst, monotonic, sleep)
        _quiet_httpx_logger()
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=dict(headers or {}),
            auth=auth,
            transport=transport,
            timeout=httpx.Timeout(http.timeout, connect=http.connect_timeout),
            limits=httpx.Limits(max_connections=http.max_concurrency),
            http2=http.http2 and _h2_available(),
            verify=http.verify_tls,
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get_json(
        self,
        route: str,
        path: Mapping[str, object] | None = None,
        *,
        params: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        return await self.request_json("GET", route, path, params=params, headers=headers)

    async def request_json(
        self,
        method: str,
        route: str,
        path: Mapping[str, object] | None = None,
        *,
        params: Mapping[str, object] | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
    ) -> Any:
        """Send, retrying transient failures, and return the decoded JSON body (None if empty)."""
        url = route.format(**{k: quote(str(v), safe="") for k, v in (path or {}).items()})
        attempt = 0
        while True:
            try:
                response = await self._send_once(method, route, url, params, headers, json)
            except httpx.TimeoutException as exc:
                error: UpstreamError = UpstreamUnavailable(
                    f"{route} timed out", route=route, status="timeout")
                reason, delay_hint, cause = "timeout", None, exc
            except httpx.TransportError as exc:
                error = UpstreamUnavailable(
                    f"{route} could not be reached ({type(exc).__name__})",
                    route=route, status="connect_error")
                reason, delay_hint, cause = "connect_error", None, exc
            else:
                if response.is_success:
                    return self._decode(route, response)
                body = parse_error_body(response)
                error, cause = UpstreamStatusError(route, response.status_code, body), None
                reason = self._retry_reason(response.status_code, body)
                if reason is None:
                    raise error
                delay_hint = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            if attempt >= self._cfg.max_retries:
                raise error from cause
            attempt += 1
            self._observer.retry(self.source, reason)
            delay = self._backoff(attempt, delay_hint)
            log.debug("%s %s: retry %d in %.2fs (%s)", self.source, route, attempt, delay, reason)
            await self._sleep(delay)

    async def _send_once(self, method, route, url, params, headers, json) -> httpx.Response:
        """One exchange under the concurrency bound and the rate limit, reported to the observer."""
        async with self._semaphore:
            await self._bucket.acquire()
            started = self._monotonic()
            status = "connect_error"
            try:
                response = await self._client.request(
                    method, url, params=_clean(params), headers=headers, json=json)
                await response.aread()
                status = str(response.status_code)
                return response
            except httpx.TimeoutException:
                status = "timeout"
                raise
            finally:
                self._observer.request(self.source, route, status, max(0.0, self._monotonic() - started))

    def _retry_reason(self, status: int, body: ErrorBody) -> str | None:
        if status == 429:
            return "rate_limited"
        if status == 408:
            return "timeout"
        if status >= 500:
            if body.code is not None and self._is_outcome_code(body.code):
                return None  # an aggregation outcome riding on HTTP 500: final
            return "server_error"
        return None

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, min(max, base·2^(attempt-1))]; Retry-After wins, capped."""
        if retry_after is not None:
            return min(retry_after, self._cfg.backoff_max)
        ceiling = min(self._cfg.backoff_max, self._cfg.backoff_base * 2 ** (attempt - 1))
        return self._random() * ceiling

    def _decode(self, route: str, response: httpx.Response) -> Any:
        if not response.content.strip():
            return None
        try:
            return response.json()
        except ValueError:
            self._observer.invalid_record(self.source, "malformed_json")
            raise MalformedResponse(
                f"{route} answered HTTP {response.status_code} with a body that is not JSON",
                route=route, status=str(response.status_code)) from None


def _clean(params: Mapping[str, object] | None) -> dict[str, str] | None:
    if params is None:
        return None
    return {k: str(v) for k, v in params.items() if v is not None}


def _quiet_httpx_logger() -> None:
    """httpx logs every full URL (with customer ids) at INFO; keep that at WARNING.

    Only when nobody configured the ``httpx`` logger: an explicit setting wins.
    """
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        httpx_log.setLevel(logging.WARNING)


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        log.warning("http2 requested but the h2 package is missing; using HTTP/1.1")
        return False
    return True


def first_present(*values: object) -> object:
    """The first value that is neither None nor an empty string."""
    for value in values:
        if value is not None and value != "":
            return value
    return None
