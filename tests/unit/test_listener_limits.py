"""The listeners' connection limits on a real uvicorn server and real sockets (in process):
the connection cap, the header timeout of a keep-alive connection's next request, the header
size cap whatever the reads' sizes, and pipelined requests."""

from __future__ import annotations

import asyncio
import asyncio.constants
import contextlib

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from exporter.web.limits import ListenerLimits
from exporter.web.server import BODY_SLICE, create_app, http_server
from exporter.web.toolkit import WebConfigFile
from tests.integration.procs import free_port
from tests.tls_support import CA


async def hello(request):
    return PlainTextResponse("hello")


@contextlib.asynccontextmanager
async def serving(limits: ListenerLimits):
    port = free_port()
    server = http_server(Starlette(routes=[Route("/", hello)]), f"127.0.0.1:{port}",
                         limits=limits)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def request(reader, writer, data: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
    writer.write(data)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length")), 0)
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def test_the_connection_beyond_the_cap_gets_503_and_those_open_are_served():
    refused = []
    async with serving(ListenerLimits(max_connections=3, refused=refused.append)) as port:
        open_ = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
        writer.close()
        for r, w in open_:
            assert (await request(r, w)).startswith(b"HTTP/1.1 200")
            w.close()
    assert refused == ["max_connections"], "the refused connection is reported once, with why"


async def test_a_keep_alive_requests_headers_have_their_own_deadline():
    refused = []
    async with serving(ListenerLimits(read_header_timeout=0.3, refused=refused.append)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await request(reader, writer)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.5)  # idle between requests is not header time
        assert (await request(reader, writer)).startswith(b"HTTP/1.1 200")
        assert refused == [], "an idle keep-alive connection is not refused"
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a next request that never ends
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        writer.close()
    assert refused == ["header_timeout"]


async def test_a_silent_connection_is_closed_after_the_header_timeout():
    refused = []
    async with serving(ListenerLimits(read_header_timeout=0.2, refused=refused.append)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert refused == ["header_timeout"]


@pytest.mark.parametrize("piece", [1, 7, 4096, 70_000])
async def test_the_header_cap_holds_whatever_the_size_of_each_read(piece):
    block = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    refused = []
    async with serving(ListenerLimits(max_header_bytes=65_536, refused=refused.append)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with contextlib.suppress(ConnectionError):
            for i in range(0, len(block), piece):
                writer.write(block[i:i + piece])
                if piece < 4096 and i % 8192 < piece:
                    await writer.drain()
            await writer.drain()
        try:
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            answer = b"reset"  # closed with our bytes unread: the kernel resets, the 431 is lost
        assert answer.startswith(b"HTTP/1.1 431") or answer == b"reset", answer[:100]
        writer.close()
    assert refused == ["header_too_large"]


async def test_pipelined_requests_are_all_answered():
    refused = []
    async with serving(ListenerLimits(read_header_timeout=0.5, refused=refused.append)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        for _ in range(3):
            assert (await request(reader, writer, b"")).startswith(b"HTTP/1.1 200")
        writer.close()
    assert refused == []


async def test_a_large_metrics_body_goes_out_in_slices_and_arrives_whole():
    class Exposition:
        def render(self, accept: str, accept_encoding: str):
            return bytes(range(256)) * 1200, "text/plain; version=0.0.4", False

    port = free_port()
    server = http_server(create_app(Exposition(), lambda: True), f"127.0.0.1:{port}")
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    sent: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            head = await client.head("/metrics")
            assert head.headers["content-length"] == str(256 * 1200) and head.content == b""
            for _ in range(2):  # the same connection, kept alive
                body = await client.get("/metrics")
                assert body.content == bytes(range(256)) * 1200
                sent.append(len(body.content))
    finally:
        server.should_exit = True
        await task
    assert 4 * BODY_SLICE < 256 * 1200 and sent == [256 * 1200] * 2


async def test_a_tls_handshake_that_never_comes_is_cut_off_with_the_header_timeout(
        tmp_path, monkeypatch):
    monkeypatch.setattr(asyncio.constants, "SSL_HANDSHAKE_TIMEOUT", 60.0)
    ca = CA(tmp_path / "pki")
    ca.issue("server", cert_path=tmp_path / "tls.crt", key_path=tmp_path / "tls.key")
    (tmp_path / "web.yml").write_text("tls_server_config: {cert_file: tls.crt, "
                                      "key_file: tls.key}\n")
    port = free_port()
    server = http_server(Starlette(routes=[Route("/", hello)]), f"127.0.0.1:{port}",
                         WebConfigFile(tmp_path / "web.yml"),
                         limits=ListenerLimits(read_header_timeout=0.3))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # no ClientHello
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert asyncio.constants.SSL_HANDSHAKE_TIMEOUT == 0.3
    finally:
        server.should_exit = True
        await task
