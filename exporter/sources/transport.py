"""HTTP/1.1 keep-alive through aiohttp's connection pool, behind the httpx transport API.

httpcore's pool spends more CPU on connection bookkeeping than the agent spends on a
request; aiohttp's pool is mostly C. Answers come back fully read (the agent reads every
body whole), which skips httpx's streaming machinery. Unit tests swap this for an
``httpx.MockTransport``; the client code above is the same.
"""

from __future__ import annotations

import ssl

import aiohttp
import httpx
from yarl import URL


class AiohttpTransport(httpx.AsyncBaseTransport):
    """``max_connections`` connections at most, all kept alive ``keepalive`` seconds.

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
