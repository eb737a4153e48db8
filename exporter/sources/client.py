"""The upstream HTTP client every source uses: bounded, rate-limited, retrying, reporting.

One :class:`UpstreamClient` per source bounds concurrency, rate-limits with a token bucket and
retries transient failures with exponential backoff and full jitter, honouring
``Retry-After``. Every exchange is reported to the observer under its *route template*, so
no customer or account id ever reaches a metric label. Sleep, clock and random are injected
so that tests run without real waiting.

The client drives a transport directly instead of going through ``httpx.AsyncClient``,
whose per-request URL merging, cookie extraction and auth flow cost more CPU than the
exchange itself (``bench/bench_client.py``). What the client would add that the agent needs
is done here once: default headers, the timeout, a proxy from the environment. The default
transport (:class:`~exporter.sources.transport.Http11Transport`) is called with the path and
headers as they are, without ``httpx.Request``/``httpx.Response`` objects; any other httpx
transport (``MockTransport`` in unit tests, httpcore for HTTP/2, aiohttp behind a proxy) gets
an ``httpx.Request``. Both answer with what the client reads: ``status_code``, ``headers``,
``content``.
"""

from __future__ import annotations

import asyncio
import json as _json
import logging
import random as _random
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import httpx
import orjson

from exporter import __version__
from exporter.config import HttpConfig
from exporter.sources.base import Clock, Sleep, UpstreamObserver
from exporter.sources.drift import DriftMeter
from exporter.sources.errors import (
    MalformedResponse,
    UpstreamError,
    UpstreamStatusError,
    UpstreamUnavailable,
)
from exporter.sources.payloads import ErrorPayload
from exporter.sources.ratelimit import TokenBucket
from exporter.sources.retry import RetryPolicy, parse_retry_after
from exporter.sources.transport import AiohttpTransport, Answer, Http11Transport

log = logging.getLogger(__name__)

USER_AGENT = f"openfinance-exporter/{__version__}"


class UpstreamClient:
    """An httpx transport with the agent's manners: timeouts, limits, retries, reporting.

    ``clock`` is wall time (for ``Retry-After`` dates), ``monotonic`` drives the rate limit and
    durations; inject both, with ``sleep``, to test without waiting. ``transport`` replaces
    the network (an ``httpx.MockTransport`` in unit tests); by default it is
    :func:`default_transport`. ``headers`` go on every request (credentials included).

    Per request, the URL is the route's absolute template (built once per route) with the
    ids and the query filled in: httpx parses it once, nothing is merged.

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
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Callable[[], float] = _random.random,
        is_outcome_code: Callable[[int], bool] = lambda code: False,
        drift: DriftMeter | None = None,
    ):
        self.source = source
        self._base = httpx.URL(base_url.rstrip("/"))
        self._prefix = self._base.raw_path.decode("ascii").split("?")[0].rstrip("/")
        self._templates: dict[str, str] = {}
        self._fast_urls = _fast_urls_work(self._base)
        self._observer = observer
        self._drift = drift
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._retry = RetryPolicy(http, random, is_outcome_code)
        self._semaphore = asyncio.Semaphore(http.max_concurrency)
        self._bucket = TokenBucket(
            http.rate_limit_per_second, http.rate_limit_burst, monotonic, sleep)
        self._headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate",
                         **(headers or {})}
        self._timeout = httpx.Timeout(
            http.timeout, connect=http.connect_timeout, pool=http.timeout).as_dict()
        self._transport = transport if transport is not None else default_transport(
            http, str(self._base), env_proxy(str(self._base)))
        self._exchange = (self._transport.exchange if isinstance(self._transport, Http11Transport)
                          else self._exchange_httpx)

    async def aclose(self) -> None:
        await self._transport.aclose()

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
        target = self._url(route, path, params)
        attempt = 0
        while True:
            try:
                response = await self._send_once(method, route, target, headers, json)
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
                if self._drift is not None:
                    self._drift.refused(route, response.status_code, error.message)
                cause = None
                reason = self._retry.reason(response.status_code, body.code)
                if reason is None:
                    raise error
                delay_hint = parse_retry_after(response.headers.get("retry-after"), now=self._clock())
            if attempt >= self._retry.max_retries:
                raise error from cause
            attempt += 1
            self._observer.retry(self.source, reason)
            delay = self._retry.delay(attempt, delay_hint)
            log.debug("%s %s: retry %d in %.2fs (%s)", self.source, route, attempt, delay, reason)
            await self._sleep(delay)

    def _url(self, route: str, path: Mapping[str, object] | None,
             params: Mapping[str, object] | None) -> str:
        """The request target (percent-encoded path and query): the route's path, built once,
        with ids and the query filled in."""
        template = self._templates.get(route)
        if template is None:
            template = self._templates[route] = self._prefix + route
        raw_path = template.format_map({k: _quote(v) for k, v in path.items()}) if path else template
        query = urlencode({k: v for k, v in params.items() if v is not None}) if params else ""
        return f"{raw_path}?{query}" if query else raw_path

    def _absolute(self, target: str) -> httpx.URL:
        """The target on the base URL, as an ``httpx.URL`` (for httpx transports)."""
        if self._fast_urls:
            raw_path, _, query = target.partition("?")
            return _url_from_parts(self._base, raw_path, query or None)
        return self._base.copy_with(raw_path=target.encode("ascii"))

    async def _send_once(self, method, route, target, headers, json) -> Answer | httpx.Response:
        """One exchange under the concurrency bound and the rate limit, reported to the observer."""
        headers = {**self._headers, **headers} if headers else self._headers
        content = None
        if json is not None:
            content = orjson.dumps(json)
            headers = {**headers, "Content-Type": "application/json"}
        async with self._semaphore:
            await self._bucket.acquire()
            started = self._monotonic()
            status = "connect_error"
            try:
                response = await self._exchange(method, target, headers, content, self._timeout)
                status = str(response.status_code)
                return response
            except httpx.TimeoutException:
                status = "timeout"
                raise
            finally:
                self._observer.request(self.source, route, status, max(0.0, self._monotonic() - started))

    async def _exchange_httpx(self, method: str, target: str, headers: Mapping[str, str],
                              content: bytes | None, timeout: dict) -> httpx.Response:
        """The same exchange through any httpx transport, answered read."""
        request = httpx.Request(method, self._absolute(target), headers=headers, content=content,
                                extensions={"timeout": timeout})
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    def _decode(self, route: str, response: Answer | httpx.Response) -> Any:
        content = response.content
        if not content.strip():
            return None
        try:
            return decode_json(content)
        except ValueError:
            self._observer.invalid_record(self.source, "malformed_json")
            raise MalformedResponse(
                f"{route} answered HTTP {response.status_code} with a body that is not JSON",
                route=route, status=str(response.status_code)) from None


def default_transport(http: HttpConfig, base_url: str,
                      proxy: str | None = None) -> httpx.AsyncBaseTransport:
    """Our HTTP/1.1 keep-alive pool; aiohttp's behind a proxy; httpcore's for HTTP/2.

    Measured with ``bench/bench_client.py`` (agent CPU per request, same machine):
    httpcore's pool ~2.4 ms (most of it connection bookkeeping), aiohttp's under the httpx
    API ~0.4 ms, :class:`Http11Transport` a fraction of that. Connections: one per
    concurrent request, all kept alive between requests.
    """
    if http.http2 and _h2_available():
        limits = httpx.Limits(max_connections=http.max_concurrency,
                              max_keepalive_connections=http.max_concurrency)
        return httpx.AsyncHTTPTransport(verify=http.verify_tls, http2=True, limits=limits,
                                        proxy=proxy)
    if proxy is not None:
        return AiohttpTransport(max_connections=http.max_concurrency, verify=http.verify_tls,
                                proxy=proxy)
    return Http11Transport(base_url, max_connections=http.max_concurrency, verify=http.verify_tls)


def env_proxy(base_url: str) -> str | None:
    """The proxy that ``HTTPS_PROXY``/``HTTP_PROXY`` (minus ``NO_PROXY``) name for this URL."""
    parts = urlsplit(base_url)
    proxy = getproxies_environment().get(parts.scheme)
    if proxy is None or proxy_bypass_environment(parts.hostname or ""):
        return None
    return proxy


def _url_from_parts(base: httpx.URL, raw_path: str, query: str | None) -> httpx.URL:
    """``base`` with another (already percent-encoded) path and query, without parsing.

    httpx validates a URL character by character in Python (~50 µs, a tenth of a request's
    CPU); the parts here are built from constants and quoted ids, so that check cannot
    fail. This reaches into ``httpx.URL`` internals: :func:`_fast_urls_work` proves them
    at start-up and the client falls back to ``URL.copy_with`` if they have changed.
    """
    url = httpx.URL.__new__(httpx.URL)
    url._uri_reference = base._uri_reference._replace(path=raw_path, query=query)
    return url


def _fast_urls_work(base: httpx.URL) -> bool:
    try:
        fast = _url_from_parts(base, "/a%2Fb/c", "x=1&y=%C3%A9")
        return fast == base.copy_with(raw_path=b"/a%2Fb/c?x=1&y=%C3%A9") and fast.path == "/a/b/c"
    except Exception:  # httpx internals moved: parse every URL instead
        return False


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(value: object) -> str:
    """A path segment, percent-encoded; ids that need none (most) skip ``quote``."""
    text = str(value)
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


def decode_json(content: bytes) -> Any:
    """orjson (about twice as fast), falling back to the standard library for what orjson
    refuses but JSON allows (lone surrogate escapes), so that one odd id costs one record."""
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        return _json.loads(content)


def _json_or_none(response: Answer | httpx.Response) -> Any:
    try:
        return decode_json(response.content)
    except ValueError:
        return None


def _h2_available() -> bool:
    try:
        import h2  # noqa: F401
    except ImportError:
        log.warning("http2 requested but the h2 package is missing; using HTTP/1.1")
        return False
    return True
