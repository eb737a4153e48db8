"""The aiohttp transport under the httpx API, against an in-process HTTP/1.1 server on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx
import pytest

from exporter.sources.transport import AiohttpTransport

TIMEOUT = httpx.Timeout(5.0).as_dict()


class LoopbackServer:
    """Answers each request on a connection with ``answer(raw_request) -> bytes | None``
    (None: close the connection without answering; "hang": never answer)."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> LoopbackServer:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                raw = head + await reader.readexactly(length)
                self.requests.append(raw)
                reply = self.answer(raw)
                if reply == "hang":
                    await asyncio.Event().wait()
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def reply(status: int, body: bytes, *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request(url: str, method: str = "GET", **kwargs) -> httpx.Request:
    return httpx.Request(method, url, extensions={"timeout": kwargs.pop("timeout", TIMEOUT)},
                         **kwargs)


async def test_a_request_goes_out_with_its_headers_and_the_answer_comes_back_read():
    async with LoopbackServer(lambda raw: reply(200, b'{"ok": true}', "X-Thing: 1")) as server:
        transport = AiohttpTransport(max_connections=2)
        response = await transport.handle_async_request(
            request(f"{server.url}/a%2Fb/c?x=1", headers={"Finicity-App-Token": "t0k"}))
        await transport.aclose()
    assert (response.status_code, response.json(), response.headers["x-thing"]) == (200, {"ok": True}, "1")
    head = server.requests[0].decode()
    assert head.startswith("GET /a%2Fb/c?x=1 HTTP/1.1\r\n") and "Finicity-App-Token: t0k" in head


async def test_a_json_body_is_posted_once_with_its_length():
    async with LoopbackServer(lambda raw: reply(200, b"{}")) as server:
        transport = AiohttpTransport(max_connections=1)
        await transport.handle_async_request(request(server.url + "/auth", "POST", json={"a": 1}))
        await transport.aclose()
    head, body = server.requests[0].split(b"\r\n\r\n")
    assert json.loads(body) == {"a": 1} and head.lower().count(b"content-length") == 1


async def test_a_gzip_answer_is_decoded():
    payload = gzip.compress(b'{"accounts": []}')
    async with LoopbackServer(lambda raw: reply(200, payload, "Content-Encoding: gzip")) as server:
        transport = AiohttpTransport(max_connections=1)
        response = await transport.handle_async_request(request(server.url))
        await transport.aclose()
    assert response.json() == {"accounts": []}


async def test_connections_are_kept_alive_and_reused():
    async with LoopbackServer(lambda raw: reply(200, b"{}")) as server:
        transport = AiohttpTransport(max_connections=1)
        for _ in range(5):
            await transport.handle_async_request(request(server.url))
        await transport.aclose()
    assert len(server.requests) == 5 and server.connections == 1


async def test_a_refused_connection_is_an_httpx_connect_error():
    async with LoopbackServer(lambda raw: None) as server:
        url = server.url
    transport = AiohttpTransport(max_connections=1)
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(request(url))
    await transport.aclose()


async def test_a_connection_closed_without_an_answer_is_an_httpx_transport_error():
    async with LoopbackServer(lambda raw: None) as server:
        transport = AiohttpTransport(max_connections=1)
        with pytest.raises(httpx.TransportError) as caught:
            await transport.handle_async_request(request(server.url))
        await transport.aclose()
    assert not isinstance(caught.value, httpx.TimeoutException)


async def test_an_answer_that_never_comes_is_an_httpx_read_timeout():
    async with LoopbackServer(lambda raw: "hang") as server:
        transport = AiohttpTransport(max_connections=1)
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(
                request(server.url, timeout=httpx.Timeout(5.0, read=0.05).as_dict()))
        await transport.aclose()
