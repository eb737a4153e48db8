"""The upstream HTTP client every source uses: bounded, rate-limited, retrying, reporting.

One :class:`UpstreamClient` per source bounds concurrency, rate-limits with a token bucket and
retries transient failures with exponential backoff and full jitter, honouring
``Retry-After``. Every exchange is reported to the observer under its *route template*, so
no customer or account id ever reaches a metric label. Sleep, clock and random are injected
so that tests run without real waiting.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx

from exporter.config import HttpConfig
from exporter.sources.base import Clock, Sleep, UpstreamObserver
from exporter.sources.errors import (
    MalformedResponse,
    UpstreamError,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from exporter.sources.payloads import ErrorPayload
from exporter.sources.ratelimit import TokenBucket
from exporter.sources.retry import RetryPolicy, parse_retry_after

log = logging.getLogger(__name__)


class UpstreamClient:
    """An ``httpx.AsyncClient`` with the agent's manners: timeouts, limits, retries, reporting.

    ``clock`` is wall time (for ``Retry-After`` dates), ``monotonic`` drives the rate limit and
    durations; inject both, with ``sleep``, to test without waiting. ``transport`` replaces
    the network (an ``httpx.MockTransport`` in unit tests).

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
        self._observer = observer
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._retry = RetryPolicy(http, random, is_outcome_code)
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
                body = ErrorPayload.read(_json_or_none(response))
                error = UpstreamStatusError(route, response.status_code, body.code, body.text())
                cause = None
                reason = self._retry.reason(response.status_code, body.code)
                if reason is None:
                    raise error
                delay_hint = parse_retry_after(response.headers.get("Retry-After"), now=self._clock())
            if attempt >= self._retry.max_retries:
                raise error from cause
            attempt += 1
            self._observer.retry(self.source, reason)
            delay = self._retry.delay(attempt, delay_hint)
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


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


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
