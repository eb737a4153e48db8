"""The sandbox ASGI app: Finicity under ``/finicity``, MX under ``/mx``, control under ``/sandbox``.

``create_app(scenario, clock)`` builds the fleet once and returns a Starlette app; its
:class:`~exporter.sandbox.runtime.SandboxRuntime` (tokens, counters, fault dice) is
``app.state.sandbox``. Every provider request is counted by route template; refresh/aggregate
calls are counted apart and refused with 403. Authentication is checked here, once, for every
route that needs it (each provider module's ``authenticate``), so handlers only see callers
that passed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from exporter.sandbox import connect, control_api, finicity_api, mx_api
from exporter.sandbox.clock import SandboxClock
from exporter.sandbox.runtime import SandboxRuntime
from exporter.sandbox.scenario import Scenario

__all__ = [
    "SandboxRuntime",
    "create_app",
    "runtime_of",
]

Handler = Callable[[SandboxRuntime, Request], Awaitable[Response]]
Guard = Callable[[SandboxRuntime, Request], Response | None]

# Route kinds (the last field of a provider module's ROUTES) of partner calls: they need the
# provider's credentials (checked here, once) and may be faulted by scenario.faults. The
# other kinds: "auth" (token creation) and "refresh" (always 403).
PARTNER_CALLS = frozenset({"read", "connect"})


def _provider_endpoint(rt: SandboxRuntime, provider: str, method_path: str, handler: Handler,
                       kind: str, guard: Guard):
    async def endpoint(request: Request) -> Response:
        rt.webhooks.start_watching()
        rt.requests[method_path] += 1
        if kind == "refresh":
            rt.refresh_calls[method_path] += 1
        response = None
        if kind in PARTNER_CALLS or (kind == "auth" and rt.scenario.faults.include_auth):
            response = await rt.fault(provider)
        if response is None and kind in PARTNER_CALLS:
            response = guard(rt, request)
        if response is None:
            response = await handler(rt, request)
        rt.responses[f"{method_path} {response.status_code}"] += 1
        return response

    return endpoint


def _control_endpoint(rt: SandboxRuntime, handler: Handler):
    async def endpoint(request: Request) -> Response:
        rt.webhooks.start_watching()
        return await handler(rt, request)

    return endpoint


def runtime_of(app: Starlette) -> SandboxRuntime:
    """The runtime behind an app made by :func:`create_app` (for in-process callers)."""
    return app.state.sandbox


def create_app(scenario: Scenario, clock: SandboxClock | None = None, *,
               webhook_transport: httpx.AsyncBaseTransport | None = None) -> Starlette:
    """The sandbox as an ASGI app. Builds the fleet now (under 2 s and ~5 MB for 100k customers).
    ``webhook_transport``: the HTTP transport its webhooks go out through (tests)."""
    if clock is None:
        clock = SandboxClock(scenario.night_seconds)
    rt = SandboxRuntime(scenario, clock, webhook_transport=webhook_transport)
    rt.webhooks.on_night = lambda: connect.new_night(rt)
    mounts = []
    for provider, module in (("finicity", finicity_api), ("mx", mx_api)):
        routes = []
        for methods, path, handler, kind in module.ROUTES:
            method_path = f"{methods[0]} /{provider}{path}"
            endpoint = _provider_endpoint(rt, provider, method_path, handler, kind,
                                          module.authenticate)
            routes.append(Route(path, endpoint, methods=methods))
        mounts.append(Mount(f"/{provider}", routes=routes))
    control = [Route(path, _control_endpoint(rt, handler), methods=methods)
               for methods, path, handler in control_api.ROUTES]
    mounts.append(Mount("/sandbox", routes=control))
    mounts.append(Route(connect.PAGE_PATH, _control_endpoint(rt, connect.fix_page),
                        methods=["GET"]))
    app = Starlette(routes=mounts)
    app.state.sandbox = rt
    return app
