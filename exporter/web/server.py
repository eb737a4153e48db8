"""The agent's HTTP side: /metrics, /-/healthy, /-/ready and a landing page (Starlette).

Neither probe looks at the upstream APIs: an aggregator outage must show as a metric, not
as a restarting pod. Ready means the state store is loaded and the first snapshot published.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Iterator, Sequence

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from exporter import __version__
from exporter.metrics import Exposition
from exporter.web.addresses import split_listen_address
from exporter.web.limits import (
    KEEP_ALIVE_IDLE,
    ListenerLimits,
    bound_tls_handshake,
    guarded_protocol,
)
from exporter.web.toolkit import WebConfigFile

log = logging.getLogger(__name__)

#: After a stop signal, how long shutdown may take before the agent logs what it still
#: waits for (a warning with each pending task's code location: no ids, no payloads).
SHUTDOWN_REPORT_AFTER = 10.0


def create_app(exposition: Exposition, ready: Callable[[], bool],
               telemetry_path: str = "/metrics", extra_routes: Sequence[Route] = ()) -> Starlette:
    """``extra_routes``: features' pages on this listener (institution health's /status…),
    linked from the landing page."""
    async def metrics(request: Request) -> Response:
        body, content_type, gzipped = exposition.render(
            request.headers.get("accept", ""), request.headers.get("accept-encoding", ""))
        headers = {"Content-Encoding": "gzip"} if gzipped else {}
        return PacedResponse(body, media_type=content_type, headers=headers)

    async def healthy(request: Request) -> Response:
        return PlainTextResponse("OpenFinance Exporter is Healthy.\n")

    async def ready_probe(request: Request) -> Response:
        if ready():
            return PlainTextResponse("OpenFinance Exporter is Ready.\n")
        return PlainTextResponse("OpenFinance Exporter is not ready.\n", status_code=503)

    async def index(request: Request) -> Response:
        path = html.escape(telemetry_path)
        extra_links = "".join(f' · <a href="{html.escape(r.path)}">{html.escape(r.path)}</a>'
                              for r in extra_routes)
        return HTMLResponse(
            f"<html><head><title>OpenFinance Exporter</title></head><body>"
            f"<h1>OpenFinance Exporter {__version__}</h1>"
            f'<p><a href="{path}">Metrics</a> · <a href="/-/healthy">Healthy</a> · '
            f'<a href="/-/ready">Ready</a>{extra_links}</p></body></html>')

    return Starlette(routes=[
        Route(telemetry_path, metrics, methods=["GET", "HEAD"]),
        Route("/-/healthy", healthy, methods=["GET", "HEAD"]),
        Route("/-/ready", ready_probe, methods=["GET", "HEAD"]),
        Route("/", index),
        *extra_routes,
    ])


#: Slice of a large body handed to the connection at a time (see :class:`PacedResponse`).
BODY_SLICE = 65_536


class PacedResponse(Response):
    """A response whose body goes out a slice at a time, each slice once the connection has
    taken the previous one: a slow or stalled reader holds a slice in its buffers, not a copy
    of the whole body (1,000 parallel TLS scrapes peaked ~150 MB higher without it)."""

    async def __call__(self, scope, receive, send) -> None:
        body = memoryview(self.body)
        if len(body) <= BODY_SLICE:
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        for start in range(0, len(body), BODY_SLICE):
            await send({"type": "http.response.body", "body": body[start:start + BODY_SLICE],
                        "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`serve_until_signal`.

    uvicorn re-raises SIGTERM after its own shutdown, which would kill the process before
    the agent has stopped its scheduler and flushed its state.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_server(app, listen_address: str, web_config: WebConfigFile | None = None, *,
                authenticate: bool = True, limits: ListenerLimits | None = None) -> Server:
    """A server for ``app``; with ``web_config`` (``--web.config.file``) behind its TLS, basic
    auth and headers. ``authenticate=False`` (the webhook listener, whose routes authenticate
    each sender themselves) takes only the TLS and the headers. ``limits``: header size and
    time, connections (exporter/web/limits.py); keep-alive idle 30 s."""
    host, port = split_listen_address(listen_address)
    server_limits = limits or ListenerLimits()
    if web_config is not None:
        app = web_config.middleware(app, authenticate=authenticate)
    # uvicorn's warnings are a client's doing ("Invalid HTTP request received." per bad
    # request): on an internet-facing listener, one log line per malformed request is a flood.
    server = Server(uvicorn.Config(app, host=host, port=port, log_level="error",
                                   access_log=False, lifespan="off",
                                   http=guarded_protocol(server_limits),
                                   timeout_keep_alive=KEEP_ALIVE_IDLE))
    if web_config is not None:
        web_config.install(server.config)
        if web_config.tls_enabled:
            bound_tls_handshake(server_limits.read_header_timeout)
    return server


async def serve_until_signal(servers: list[uvicorn.Server],
                             before_stop: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run servers together until SIGINT/SIGTERM (or one of them stops), then stop them all;
    ``before_stop`` runs first, while every server still answers. A shutdown that takes over
    :data:`SHUTDOWN_REPORT_AFTER` logs what it waits for; a second signal exits at once
    (the state store is crash-safe: what was committed stays, the rest is redone)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second stop signal: exiting without waiting for a clean stop")
            logging.shutdown()
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    waiter = asyncio.create_task(stop.wait())
    report = None
    try:
        await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        report = loop.call_later(SHUTDOWN_REPORT_AFTER, report_pending_tasks)
        if before_stop is not None:
            await before_stop()
    finally:
        for s in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        waiter.cancel()
        if report is not None:
            report.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)


def report_pending_tasks() -> None:
    """Log, at warning, every task still pending during a slow shutdown and where it waits."""
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    where = []
    for task in pending:
        where.append(f"{task.get_name()}: {' > '.join(_await_chain(task.get_coro())) or '-'}")
    log.warning("shutdown still waiting after %gs pending=%d tasks=[%s]",
                SHUTDOWN_REPORT_AFTER, len(pending), "; ".join(where))


def _await_chain(coro) -> list[str]:
    """Where a coroutine waits: its frame, then each coroutine it awaits, innermost last."""
    out = []
    while coro is not None and len(out) < 12:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            out.append(f"{frame.f_code.co_name}@"
                       f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return out
