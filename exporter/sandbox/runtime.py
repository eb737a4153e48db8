"""The mutable side of a running sandbox, shared by its handlers: clock, fleet, tokens,
counters, the fault dice, issued Connect links and the webhook emitter. Handlers take it as their first argument; the app that routes
to them (:mod:`exporter.sandbox.app`) creates it once per app."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import httpx
from starlette.responses import JSONResponse, Response

from exporter.sandbox.clock import SandboxClock
from exporter.sandbox.fleet import Fleet
from exporter.sandbox.links import ConnectLinks, FixRequests
from exporter.sandbox.scenario import Scenario
from exporter.sandbox.webhooks import WebhookEmitter
from exporter.status_codes import Catalog

__all__ = ["SandboxRuntime"]


class SandboxRuntime:
    """The mutable side of a running sandbox: clock, fleet, tokens, counters, fault dice,
    Connect links, webhooks. ``webhook_transport`` replaces the emitter's HTTP transport
    (tests)."""

    def __init__(self, scenario: Scenario, clock: SandboxClock, catalog: Catalog | None = None,
                 webhook_transport: httpx.AsyncBaseTransport | None = None):
        self.scenario = scenario
        self.clock = clock
        self.fleet = Fleet(scenario, clock, catalog)
        self.links = ConnectLinks(clock, scenario.connect)
        self.fix_requests = FixRequests()
        self.fix_request_counts: Counter[str] = Counter()
        self._background: set[asyncio.Task] = set()
        self.webhooks = WebhookEmitter(self.fleet, scenario.webhooks, webhook_transport)
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.auth_failures = 0
        self.finicity_locked = False
        self.requests: Counter[str] = Counter()
        self.responses: Counter[str] = Counter()
        self.refresh_calls: Counter[str] = Counter()
        self.faults_injected: Counter[str] = Counter()
        self._dice = random.Random(scenario.seed ^ 0xFA17)

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` after the current request, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop background work (webhook deliveries, pending user repairs)."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.webhooks.close()

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
            "connect_links_issued": self.links.issued,
            "webhooks": dict(sorted(self.webhooks.counters.items())),
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
