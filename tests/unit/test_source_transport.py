"""The HTTP/1.1 transports under the httpx API (ours on httptools, aiohttp's for proxies),
against an in-process HTTP/1.1 server on loopback."""

from __future__ import annotations

import asyncio
import gzip
import json
import ssl

import httpx
import pytest

from exporter.sources.transport import AiohttpTransport, Http11Transport
from tests.tls_support import CA

TIMEOUT = httpx.Timeout(5.0).as_dict()


@pytest.fixture(params=["http11", "aiohttp"])
def make_transport(request):
    """Builds either transport for a server URL: every behaviour below holds for both."""
    if request.param == "aiohttp":
        return lambda url, max_connections: AiohttpTransport(max_connections=max_connections)
    return lambda url, max_connections: Http11Transport(url, max_connections=max_connections)


class LoopbackServer:
    """Answers each request on a connection with ``answer(raw_request) -> bytes | None``
    (None: close the connection without answering; "hang": never answer; ``(bytes,
    "close")``: answer, then close)."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None):
        self.answer = answer
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self) -> LoopbackServer:
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=self.tls)
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
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
                close = isinstance(reply, tuple)  # (bytes, "close"): answer, then hang up
                writer.write(reply[0] if close else reply)
                await writer.drain()
                if close:
                    break
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


async def test_a_request_goes_out_with_its_headers_and_the_answer_comes_back_read(make_transport):
    async with LoopbackServer(lambda raw: reply(200, b'{"ok": true}', "X-Thing: 1")) as server:
        transport = make_transport(server.url, 2)
        response = await transport.handle_async_request(
            request(f"{server.url}/a%2Fb/c?x=1", headers={"Finicity-App-Token": "t0k"}))
        await transport.aclose()
    assert (response.status_code, response.json(), response.headers["x-thing"]) == (200, {"ok": True}, "1")
    head = server.requests[0].decode()
    assert head.startswith("GET /a%2Fb/c?x=1 HTTP/1.1\r\n") and "Finicity-App-Token: t0k" in head


async def test_a_json_body_is_posted_once_with_its_length(make_transport):
    async with LoopbackServer(lambda raw: reply(200, b"{}")) as server:
        transport = make_transport(server.url, 1)
        await transport.handle_async_request(request(server.url + "/auth", "POST", json={"a": 1}))
        await transport.aclose()
    head, body = server.requests[0].split(b"\r\n\r\n")
    assert json.loads(body) == {"a": 1} and head.lower().count(b"content-length") == 1


async def test_a_gzip_answer_is_decoded(make_transport):
    payload = gzip.compress(b'{"accounts": []}')
    async with LoopbackServer(lambda raw: reply(200, payload, "Content-Encoding: gzip")) as server:
        transport = make_transport(server.url, 1)
        response = await transport.handle_async_request(request(server.url))
        await transport.aclose()
    assert response.json() == {"accounts": []}


async def test_connections_are_kept_alive_and_reused(make_transport):
    async with LoopbackServer(lambda raw: reply(200, b"{}")) as server:
        transport = make_transport(server.url, 1)
        for _ in range(5):
            await transport.handle_async_request(request(server.url))
        await transport.aclose()
    assert len(server.requests) == 5 and server.connections == 1


async def test_a_refused_connection_is_an_httpx_connect_error(make_transport):
    async with LoopbackServer(lambda raw: None) as server:
        url = server.url
    transport = make_transport(server.url, 1)
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(request(url))
    await transport.aclose()


async def test_a_connection_closed_without_an_answer_is_an_httpx_transport_error(make_transport):
    async with LoopbackServer(lambda raw: None) as server:
        transport = make_transport(server.url, 1)
        with pytest.raises(httpx.TransportError) as caught:
            await transport.handle_async_request(request(server.url))
        await transport.aclose()
    assert not isinstance(caught.value, httpx.TimeoutException)


async def test_an_answer_that_never_comes_is_an_httpx_read_timeout(make_transport):
    async with LoopbackServer(lambda raw: "hang") as server:
        transport = make_transport(server.url, 1)
        with pytest.raises(httpx.ReadTimeout):
            await transport.handle_async_request(
                request(server.url, timeout=httpx.Timeout(5.0, read=0.05).as_dict()))
        await transport.aclose()


# --------------------------------------------------------------------------- Http11Transport only


async def exchange(transport: Http11Transport, target: str = "/", **kwargs):
    return await transport.exchange(kwargs.pop("method", "GET"), target, kwargs.pop("headers", {}),
                                    kwargs.pop("content", None), kwargs.pop("timeout", TIMEOUT))


async def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error():
    async with LoopbackServer(lambda raw: (reply(200, b"{}"), "close")) as server:
        transport = Http11Transport(server.url, max_connections=1)
        answers = [await exchange(transport) for _ in range(3)]
        await transport.aclose()
    assert [a.status_code for a in answers] == [200, 200, 200] and server.connections == 3


async def test_a_get_on_a_connection_closed_under_it_is_sent_once_more_on_a_new_one():
    answered = []

    def answer(raw):
        answered.append(raw)
        return reply(200, b"{}") if len(answered) != 2 else None  # 2nd: hang up, no answer

    async with LoopbackServer(answer) as server:
        transport = Http11Transport(server.url, max_connections=1)
        first = await exchange(transport)
        second = await exchange(transport, "/again")
        await transport.aclose()
    assert (first.status_code, second.status_code) == (200, 200)
    assert server.connections == 2 and answered[2].startswith(b"GET /again ")


async def test_a_post_on_a_connection_closed_under_it_is_not_sent_again():
    answered = []

    def answer(raw):
        answered.append(raw)
        return reply(200, b"{}") if len(answered) != 2 else None

    async with LoopbackServer(answer) as server:
        transport = Http11Transport(server.url, max_connections=1)
        await exchange(transport)
        with pytest.raises(httpx.TransportError):
            await exchange(transport, method="POST", content=b"{}")
        await transport.aclose()
    assert len(answered) == 2


async def test_chunked_and_close_delimited_answers_are_read_whole():
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"3\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\n\r\n")
    to_the_end = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"b\": 2}"
    replies = iter([chunked, (to_the_end, "close")])
    async with LoopbackServer(lambda raw: next(replies)) as server:
        transport = Http11Transport(server.url, max_connections=1)
        first, second = await exchange(transport), await exchange(transport)
        await transport.aclose()
    assert (json.loads(first.content), json.loads(second.content)) == ({"a": 1}, {"b": 2})


async def test_more_requests_than_connections_wait_their_turn_on_the_same_connection():
    async with LoopbackServer(lambda raw: reply(200, b"{}")) as server:
        transport = Http11Transport(server.url, max_connections=1)
        answers = await asyncio.gather(*(exchange(transport, f"/{i}") for i in range(5)))
        await transport.aclose()
    assert [a.status_code for a in answers] == [200] * 5 and server.connections == 1


async def test_no_connection_free_within_the_pool_timeout_is_an_httpx_pool_timeout():
    async with LoopbackServer(lambda raw: "hang") as server:
        transport = Http11Transport(server.url, max_connections=1)
        hung = asyncio.create_task(exchange(transport))
        await asyncio.sleep(0.35)
        with pytest.raises(httpx.PoolTimeout):
            await exchange(transport, timeout=httpx.Timeout(5.0, pool=0.05).as_dict())
        hung.cancel()
        await asyncio.gather(hung, return_exceptions=True)
        await transport.aclose()


async def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent():
    async with LoopbackServer(lambda raw: reply(200, b"{}")) as server:
        transport = Http11Transport(server.url, max_connections=1)
        with pytest.raises(httpx.LocalProtocolError):
            await exchange(transport, headers={"Finicity-App-Token": "t\r\nX-Evil: 1"})
        await transport.aclose()
    assert server.requests == []


def test_the_host_header_names_the_port_only_when_it_is_not_the_scheme_default():
    assert Http11Transport("https://api.finicity.com/x", max_connections=1)._host_line \
        == "\r\nHost: api.finicity.com\r\n"
    assert Http11Transport("http://127.0.0.1:8080", max_connections=1)._host_line \
        == "\r\nHost: 127.0.0.1:8080\r\n"


async def test_tls_is_verified_unless_verification_is_turned_off(tmp_path):
    ca = CA(tmp_path)
    issued = ca.issue("upstream")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(issued.cert, issued.key)
    async with LoopbackServer(lambda raw: reply(200, b'{"ok": 1}'), tls) as server:
        checked = Http11Transport(server.url, max_connections=1)
        with pytest.raises(httpx.ConnectError):  # signed by a CA nobody trusts
            await exchange(checked)
        await checked.aclose()
        unchecked = Http11Transport(server.url, max_connections=1, verify=False)
        answer = await exchange(unchecked)
        await unchecked.aclose()
    assert json.loads(answer.content) == {"ok": 1}


async def test_a_slow_answer_that_keeps_arriving_is_not_a_read_timeout():
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n")
        for piece in (b"{\"", b"a\"", b":1", b"}\n"):  # 1.4 s in all, never 1 s quiet
            await asyncio.sleep(0.35)
            writer.write(piece)
            await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    transport = Http11Transport(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}",
                                max_connections=1)
    answer = await exchange(transport, timeout=httpx.Timeout(5.0, read=1.0).as_dict())
    await transport.aclose()
    server.close()
    assert json.loads(answer.content) == {"a": 1}
