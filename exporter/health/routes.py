"""Starlette routes of institution health, mounted on the metrics listener.

``GET /api/v1/institutions`` returns :meth:`HealthReport.as_json` (schema in
docs/institution-health.md; a partner's Connect flow can use it to pick an aggregator);
``GET /status`` the same as an HTML page, with the routing advice (``exporter.routing``)
when ``advice`` is given. Both are built from the current snapshot on each request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from exporter.health.page import RouteAdvice, render_status_page
from exporter.health.report import HealthReport

API_PATH = "/api/v1/institutions"
STATUS_PATH = "/status"
Advice = Callable[[HealthReport], Sequence[RouteAdvice]]
"""The routing advice evaluated from a report (``exporter.routing.advisor.Advisor.update``)."""


def health_routes(report: Callable[[], HealthReport], advice: Advice | None = None,
                  ) -> list[Route]:
    async def institutions(request: Request) -> Response:
        return JSONResponse(report().as_json(), headers={"Cache-Control": "no-store"})

    async def status(request: Request) -> Response:
        health = report()
        routing = None if advice is None else {a.key: a for a in advice(health)}
        return HTMLResponse(render_status_page(health, API_PATH, routing),
                            headers={"Cache-Control": "no-store"})

    return [Route(API_PATH, institutions, methods=["GET", "HEAD"]),
            Route(STATUS_PATH, status, methods=["GET", "HEAD"])]
