"""The sources' HTTP/1.1 transports, answers read whole, under the httpx transport API.

:class:`Http11Transport` (the default): keep-alive connections to one origin on asyncio
protocols, answers parsed by httptools (C), called by the client without httpx's request
and response objects. :class:`AiohttpTransport`: aiohttp's pool, for HTTP proxies. Both
beat httpcore's pool, which spends more CPU on connection bookkeeping than the agent spends
on a request (``bench/bench_client.py``). Unit tests swap them for an ``httpx.MockTransport``;
the client code above is the same.
"""

from __future__ import annotations

import asyncio
import collections
import math
import ssl
import zlib
from collections.abc import Mapping

import aiohttp
import httptools
import httpx
from yarl import URL


class AiohttpTransport(httpx.AsyncBaseTransport):
    """aiohttp's pool (used behind an HTTP proxy). ``max_connections`` connections at most, all kept alive ``keepalive`` seconds.

    Timeouts come from the request's ``timeout`` extension (``connect``, ``read``, ``pool``)
    as httpx's own transports read them; aiohttp's errors become httpx's.
    """

    def __init__(self, *, max_connections: int, verify: bool = True, keepalive: float = 15.0,
                 proxy: str | None = None):
        self._max_connections = max_connections
        self._verify = verify
        self._keepalive = keepalive
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple, aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        """On the first request, in the running loop (aiohttp binds its session to it)."""
        tls: ssl.SSLContext | bool = httpx.create_ssl_context(verify=True) if self._verify else False
        connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=tls,
                                         keepalive_timeout=self._keepalive)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",))
        return self._session

    def _timeout(self, extension: dict) -> aiohttp.ClientTimeout:
        key = (extension.get("connect"), extension.get("read"), extension.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                sock_connect=key[0], sock_read=key[1], connect=key[2])
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        encoding = request.headers.encoding
        headers = [(k.decode(encoding), v.decode(encoding)) for k, v in request.headers.raw]
        try:
            async with session.request(
                request.method, URL(str(request.url), encoded=True),
                headers=headers, data=request.content or None,
                allow_redirects=False, proxy=self._proxy,
                timeout=self._timeout(request.extensions.get("timeout", {})),
            ) as answer:
                body = await answer.read()
        except aiohttp.ConnectionTimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc) or "connect timed out", request=request) from exc
        except TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return httpx.Response(answer.status, headers=answer.raw_headers, content=body,
                              request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


# --------------------------------------------------------------------------- one origin, HTTP/1.1

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class Answer:
    """A fully read answer: what the client reads of an ``httpx.Response``, and no more.

    ``headers`` has lower-case names (the client asks for ``retry-after``).
    """

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes):
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300


class _StaleConnection(Exception):
    """A kept-alive connection closed before any byte of the answer: nothing was processed."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection: writes a request, parses the answer with httptools (C)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future | None = None
        self.last_read = 0.0
        self.began = False
        self.headers_done = False
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.read: float | None = None

    # asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"invalid HTTP answer: {exc}"))
            self.close()

    def eof_received(self) -> bool:
        self.closed = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is None or self.waiter.done():
            return
        if self.headers_done and "content-length" not in self.headers \
                and "transfer-encoding" not in self.headers:
            self.on_message_complete(keep=False)  # the body ran to the end of the connection
        elif not self.began:
            self._fail(_StaleConnection())
        else:
            self._fail(httpx.ReadError("the server closed the connection mid-answer"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.began = True

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self, keep: bool | None = None) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if keep is None:
            keep = self.parser.should_keep_alive()
        if not keep:
            self.closed = True
        status = self.parser.get_status_code()
        waiter.set_result(Answer(status, self.headers, b"".join(self.body)))

    # the exchange
    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def check_read(self, now: float) -> bool:
        """Fail the exchange if nothing was read for ``read`` seconds; True while it waits."""
        if self.waiter is None or self.waiter.done():
            return False
        if self.read is not None and now - self.last_read >= self.read:
            self._fail(httpx.ReadTimeout("read timed out"))
            return False
        return True

    async def exchange(self, data: bytes, read: float | None) -> Answer:
        """Write the request, wait for the whole answer; the pool's watchdog enforces ``read``."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _StaleConnection()
        self.began = self.headers_done = False
        self.headers, self.body = {}, []
        self.waiter = waiter = self.loop.create_future()
        self.read = read
        self.last_read = self.loop.time()
        self.transport.write(data)
        try:
            return await waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Http11Transport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 to one origin, on asyncio protocols and the httptools parser.

    What a sweep asks of HTTP is narrow: small requests to one host, answers read whole.
    aiohttp's client spends ~0.2 ms of CPU per request on generality (tracing, cookies,
    redirects, per-request timers, its own request and response objects); this spends a
    fraction of that (``bench/bench_client.py``). :meth:`exchange` is what the client calls;
    ``handle_async_request`` serves it under the httpx API. Not for proxies or HTTP/2 (see
    ``client.default_transport``).

    A kept-alive connection the server closed before answering (its idle timeout) is
    replaced and the request sent once more if it is idempotent; anything else surfaces as
    httpx's errors, for the client's retry policy.
    """

    def __init__(self, base_url: str, *, max_connections: int, verify: bool = True,
                 keepalive: float = 15.0):
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) URL: {base_url}")
        self._host = url.host
        self._port = url.port or (443 if url.scheme == "https" else 80)
        default = (url.scheme == "https" and self._port == 443) or (url.scheme == "http" and self._port == 80)
        host = f"[{url.host}]" if ":" in url.host else url.host
        self._host_line = f"\r\nHost: {host if default else f'{host}:{self._port}'}\r\n"
        self._ssl: ssl.SSLContext | None = (
            httpx.create_ssl_context(verify=verify) if url.scheme == "https" else None)
        self.origin = f"{url.scheme}://{host}" + ("" if default else f":{self._port}")
        self._max = max_connections
        self._keepalive = keepalive
        self._idle: list[_Connection] = []
        self._opened = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False
        self._busy: set[_Connection] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._tick = math.inf

    async def exchange(self, method: str, target: str, headers: Mapping[str, str],
                       content: bytes | None, timeout: Mapping[str, float | None]) -> Answer:
        """``target`` is the percent-encoded path and query; ``timeout`` as httpx's extension."""
        data = self._head(method, target, headers, content)
        for attempt in (1, 2):
            connection, reused = await self._acquire(timeout)
            read = timeout.get("read")
            if read is not None:
                self._watch(connection, read)
            try:
                answer = await connection.exchange(data, read)
            except _StaleConnection:
                self._discard(connection)
                if reused and attempt == 1 and method in IDEMPOTENT:
                    continue
                raise httpx.RemoteProtocolError(
                    "the server closed the connection without answering") from None
            except BaseException:
                self._discard(connection)
                raise
            finally:
                self._busy.discard(connection)
            self._release(connection)
            encoding = answer.headers.pop("content-encoding", "identity")
            if encoding != "identity":  # decoded here: the headers describe what is returned
                answer.content = _decompress(encoding.strip().lower(), answer.content)
                answer.headers.pop("content-length", None)
            return answer
        raise AssertionError("unreachable")

    def _watch(self, connection: _Connection, read: float) -> None:
        """Read timeouts without a timer per request: one watchdog checks the busy
        connections every ``min(read, 1 s) / 2`` (a timeout fires up to that much late)."""
        self._busy.add(connection)
        tick = min(read, 1.0) / 2
        if self._watchdog is None or tick < self._tick:
            if self._watchdog is not None:
                self._watchdog.cancel()
            self._tick = tick
            self._watchdog = connection.loop.call_later(tick, self._check_reads)

    def _check_reads(self) -> None:
        self._watchdog = None
        if not self._busy:
            return
        loop = next(iter(self._busy)).loop
        now = loop.time()
        waiting = [c for c in self._busy if c.check_read(now)]
        if waiting:
            self._watchdog = loop.call_later(self._tick, self._check_reads)

    def _head(self, method: str, target: str, headers: Mapping[str, str],
              content: bytes | None) -> bytes:
        lines = [method, " ", target, " HTTP/1.1", self._host_line]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise httpx.LocalProtocolError(f"header {name!r} carries a line break")
            lines += (name, ": ", value, "\r\n")
        if content is not None:
            lines += ("Content-Length: ", str(len(content)), "\r\n\r\n")
            return "".join(lines).encode("utf-8") + content
        lines.append("\r\n")
        return "".join(lines).encode("utf-8")

    async def _acquire(self, timeout: Mapping[str, float | None]) -> tuple[_Connection, bool]:
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise httpx.ConnectError("the transport is closed")
            now = loop.time()
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed and now - connection.idle_since < self._keepalive:
                    return connection, True
                self._discard(connection)
            if self._opened < self._max:
                self._opened += 1
                try:
                    return await self._connect(loop, timeout.get("connect")), False
                except BaseException:
                    self._opened -= 1
                    self._wake(None)
                    raise
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout.get("pool")):
                    connection = await waiter
            except TimeoutError:
                raise httpx.PoolTimeout("no connection came free in time") from None
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self._release(waiter.result())
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if connection is not None:
                return connection, True

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> _Connection:
        try:
            async with asyncio.timeout(timeout):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None)
        except TimeoutError as exc:
            raise httpx.ConnectTimeout("connect timed out") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        return connection

    def _release(self, connection: _Connection) -> None:
        if connection.closed or self._closed:
            self._discard(connection)
            return
        if self._wake(connection):
            return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)

    def _discard(self, connection: _Connection) -> None:
        connection.close()
        self._opened -= 1
        self._wake(None)

    def _wake(self, connection: _Connection | None) -> bool:
        """Hand a connection (or, with None, the right to open one) to the next waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.headers.raw
                   if k.lower() not in (b"host", b"content-length", b"transfer-encoding")}
        body = await request.aread()
        answer = await self.exchange(request.method, request.url.raw_path.decode("ascii"), headers,
                                     body if body or request.method not in IDEMPOTENT else None,
                                     request.extensions.get("timeout", {}))
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content,
                              request=request)

    async def aclose(self) -> None:
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._idle:
            self._discard(self._idle.pop())


def _decompress(encoding: str, content: bytes) -> bytes:
    """gzip or deflate (zlib-wrapped or raw, as servers differ), the encodings we accept."""
    try:
        if encoding == "gzip":
            return zlib.decompress(content, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            try:
                return zlib.decompress(content)
            except zlib.error:
                return zlib.decompress(content, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise httpx.DecodingError(f"{encoding} body does not decompress: {exc}") from exc
    raise httpx.DecodingError(f"unexpected Content-Encoding {encoding!r}")

