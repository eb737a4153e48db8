"""Connection limits for both listeners, enforced while a request's header block is read.

uvicorn bounds bodies (per route, here) but not headers: with httptools, a header that never
ends is buffered without limit, and a client that sends one header byte a second is never
cut off. :func:`guarded_protocol` returns uvicorn's httptools protocol with, per listener:

- a header block of at most :data:`MAX_HEADER_BYTES` (431 and close beyond), counted on the
  raw bytes as they arrive, so an unterminated header costs at most that much memory;
- ``read_header_timeout`` from the connection (or the first byte of a keep-alive request)
  to the end of its header block, as Go's ``http.Server.ReadHeaderTimeout`` (408 and close
  when part of a request came, a plain close otherwise); behind TLS, the handshake within
  the same time (:func:`bound_tls_handshake`);
- ``max_connections`` open at once: the connection beyond gets 503 and is closed before
  anything is read; those already open are unaffected;
- keep-alive idle :data:`KEEP_ALIVE_IDLE` (uvicorn's ``timeout_keep_alive``).

Each connection closed by one of the first three is reported to ``refused`` with its reason
(:data:`REFUSALS`): the agent counts them in ``openfinance_listener_refusals_total``.
"""

from __future__ import annotations

import asyncio
import asyncio.constants
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEADER_BYTES = 65_536
KEEP_ALIVE_IDLE = 30
REFUSALS = ("max_connections", "header_timeout", "header_too_large")
"""Why a listener closed a connection before any route ran: beyond ``max_connections``
(503), no complete header block within ``read_header_timeout`` (408, or a plain close when
nothing came), a header block beyond ``max_header_bytes`` (431)."""


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    read_header_timeout: float = 10.0
    max_connections: int = 1000
    max_header_bytes: int = MAX_HEADER_BYTES
    refused: Callable[[str], None] | None = field(default=None, compare=False)
    """told each refusal's reason (:data:`REFUSALS`)"""


def _close_with(transport: asyncio.BaseTransport, status: bytes,
                extra: bytes = b"") -> None:
    body = status.split(b" ", 1)[1] + b"\n"
    transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\n" + extra
                    + b"connection: close\r\n\r\n" + body)
    transport.close()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`ListenerLimits` (set on a subclass)."""

    limits = ListenerLimits()

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._awaiting_headers = True
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._line_and_headers = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refused("max_connections")
            _close_with(transport, b"503 Service Unavailable", b"retry-after: 1\r\n")
            return
        self._arm_header_timer()

    def _refused(self, reason: str) -> None:
        if self.limits.refused is not None:
            self.limits.refused(reason)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.limits.read_header_timeout,
                                                      self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._awaiting_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined request waits for the one in flight
        self._refused("header_timeout")
        if self._header_bytes:
            _close_with(self.transport, b"408 Request Timeout")
        else:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and not self.transport.is_closing():
            self._arm_header_timer()  # a keep-alive request's first bytes start its clock
            self._header_bytes += len(data)
        super().data_received(data)
        if (self._awaiting_headers and self._header_bytes > self.limits.max_header_bytes
                and not self.transport.is_closing()):
            self._too_large()

    def _too_large(self) -> None:
        self._cancel_header_timer()
        self._awaiting_headers = False
        self._refused("header_too_large")
        _close_with(self.transport, b"431 Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting_headers = True
        self._line_and_headers = 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._line_and_headers += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._line_and_headers += len(name) + len(value) + 4

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel_header_timer()
        if self._line_and_headers > self.limits.max_header_bytes:
            # The whole block came in one read: refused all the same, before any route runs.
            self._too_large()
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.transport.is_closing():
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self.transport.is_closing():
            super().on_message_complete()

    def on_response_complete(self) -> None:
        self._awaiting_headers = True
        self._header_bytes = 0
        super().on_response_complete()


def bound_tls_handshake(seconds: float) -> None:
    """A TLS handshake must end within ``seconds`` too (Go bounds it by ReadHeaderTimeout):
    the protocol above only sees a connection once its handshake is done, and asyncio's own
    bound is 60 s. Process wide; the agent's outgoing TLS (httpx, via anyio) is not asyncio's."""
    if seconds < asyncio.constants.SSL_HANDSHAKE_TIMEOUT:
        asyncio.constants.SSL_HANDSHAKE_TIMEOUT = seconds


def guarded_protocol(limits: ListenerLimits) -> type[GuardedHttpToolsProtocol]:
    """The protocol class to hand ``uvicorn.Config(http=…)`` for a listener with ``limits``."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,), {"limits": limits})
