"""The sandbox ASGI app: Finicity under ``/finicity``, MX under ``/mx``, control under ``/sandbox``.

``create_app(scenario, clock)`` builds the fleet once and returns a Starlette app; its
:class:`SandboxRuntime` (tokens, counters, fault dice) is ``app.state.sandbox``. Every
provider request is counted by route template; refresh/aggregate calls are counted apart
and refused with 403.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from exporter.catalog import Catalog
from exporter.sandbox import control_api, finicity_api, mx_api
from exporter.sandbox.clock import SandboxClock
from exporter.sandbox.fleet import Fleet
from exporter.sandbox.scenario import Scenario

__all__ = [
    "SandboxRuntime",
    "create_app",
    "runtime_of",
]

Handler = Callable[["SandboxRuntime", Request], Awaitable[Response]]


class SandboxRuntime:
    """The mutable side of a running sandbox: clock, fleet, tokens, counters, fault dice."""

    def __init__(self, scenario: Scenario, clock: SandboxClock, catalog: Catalog | None = None):
        self.scenario = scenario
        self.clock = clock
        self.fleet = Fleet(scenario, clock, catalog)
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.auth_failures = 0
        self.finicity_locked = False
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.refresh_calls: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self._dice = random.Random(scenario.seed ^ 0xFA17)

    @property
    def refresh_total(self) -> int:
        return sum(self.refresh_calls.values())

    def stats_json(self) -> dict[str, Any]:
        return {
            "requests": dict(sorted(self.requests.items())),
            "responses": dict(sorted(self.responses.items())),
            "refresh_calls": {"total": self.refresh_total,
                              "by_route": dict(sorted(self.refresh_calls.items()))},
            "faults_injected": dict(sorted(self.faults_injected.items())),
            "tokens_issued": self.tokens_issued,
            "auth_failures": self.auth_failures,
            "finicity_partner_locked": self.finicity_locked,
        }

    async def fault(self, provider: str) -> Response | None:
        """Maybe delay the request, maybe answer it with 429/500/503 instead (scenario.faults)."""
        faults = self.scenario.faults
        if not faults.active:
            return None
        if faults.slow and self._dice.random() < faults.slow:
            self.faults_injected["slow"] += 1
            await asyncio.sleep(faults.slow_seconds)
        roll = self._dice.random()
        if roll < faults.rate_limited:
            kind, status, headers = "rate_limited", 429, {
                "Retry-After": str(faults.retry_after_seconds)}
            message = "Too many requests; retry later"
        elif roll < faults.rate_limited + faults.server_errors:
            kind, status, headers, message = "server_error", 500, {}, "Internal server error"
        elif roll < faults.rate_limited + faults.server_errors + faults.unavailable:
            kind, status, headers, message = ("unavailable", 503, {"Retry-After": "1"},
                                              "Service unavailable")
        else:
            return None
        self.faults_injected[kind] += 1
        if provider == "finicity":
            # Not a numeric aggregation code: a 500 carrying one would mean "account problem".
            body: dict[str, Any] = {"code": "SANDBOX_FAULT", "status": str(status),
                                    "message": f"{message} (sandbox fault injection)"}
        else:
            body = {"error": {"message": f"{message} (sandbox fault injection)"}}
        return JSONResponse(body, status_code=status, headers=headers)


def _provider_endpoint(rt: SandboxRuntime, provider: str, method_path: str, handler: Handler,
                       kind: str):
    async def endpoint(request: Request) -> Response:
        rt.requests[method_path] += 1
        if kind == "refresh":
            rt.refresh_calls[method_path] += 1
        response = None
        if kind == "read" or (kind == "auth" and rt.scenario.faults.include_auth):
            response = await rt.fault(provider)
        if response is None:
            response = await handler(rt, request)
        rt.responses[f"{method_path} {response.status_code}"] += 1
        return response

    return endpoint


def _control_endpoint(rt: SandboxRuntime, handler: Handler):
    async def endpoint(request: Request) -> Response:
        return await handler(rt, request)

    return endpoint


def runtime_of(app: Starlette) -> SandboxRuntime:
    """The runtime behind an app made by :func:`create_app` (for in-process callers)."""
    return app.state.sandbox


def create_app(scenario: Scenario, clock: SandboxClock | None = None) -> Starlette:
    """The sandbox as an ASGI app. Builds the fleet now (under 2 s and ~5 MB for 100k customers)."""
    if clock is None:
        clock = SandboxClock(scenario.night_seconds)
    rt = SandboxRuntime(scenario, clock)
    mounts = []
    for provider, module in (("finicity", finicity_api), ("mx", mx_api)):
        routes = []
        for methods, path, handler, kind in module.ROUTES:
            method_path = f"{methods[0]} /{provider}{path}"
            routes.append(Route(path, _provider_endpoint(rt, provider, method_path, handler, kind),
                                methods=methods))
        mounts.append(Mount(f"/{provider}", routes=routes))
    control = [Route(path, _control_endpoint(rt, handler), methods=methods)
               for methods, path, handler in control_api.ROUTES]
    mounts.append(Mount("/sandbox", routes=control))
    app = Starlette(routes=mounts)
    app.state.sandbox = rt
    return app
