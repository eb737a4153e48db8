"""Starlette routes of institution health, mounted on the metrics listener.

``GET /api/v1/institutions`` returns :meth:`HealthReport.as_json` (schema in
docs/institution-health.md; a partner's Connect flow can use it to pick an aggregator);
``GET /status`` the same as an HTML page, with the routing advice (``exporter.routing``)
when ``advice`` is given and the last 24 h per row when ``history`` is.
``GET /api/v1/institutions?history=24h`` adds each institution's points (at most 48 h).
Both are built from the current snapshot on each request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from exporter.durations import parse_duration
from exporter.health.history import KEEP, Pair, Point, history_json
from exporter.health.page import RouteAdvice, render_status_page
from exporter.health.report import HealthReport

API_PATH = "/api/v1/institutions"
STATUS_PATH = "/status"
Advice = Callable[[HealthReport], Sequence[RouteAdvice]]
"""The routing advice evaluated from a report (``exporter.routing.advisor.Advisor.update``)."""


History = Callable[[float], Awaitable[dict[Pair, list[Point]]]]
"""The points of the last so many seconds (``InstitutionHistory.read``)."""
PAGE_HISTORY = 86400.0


def _window(text: str) -> float:
    seconds = parse_duration(text)
    if not 0 < seconds <= KEEP:
        raise ValueError
    return seconds


def health_routes(report: Callable[[], HealthReport], advice: Advice | None = None,
                  history: History | None = None) -> list[Route]:
    async def institutions(request: Request) -> Response:
        body = report().as_json()
        asked = request.query_params.get("history")
        if asked is not None:
            try:
                window = _window(asked)
            except ValueError:
                return JSONResponse({"error": f"history: a duration up to {KEEP / 3600:g}h, "
                                     "such as 24h"}, status_code=400)
            points = {} if history is None else await history(window)
            for inst in body["institutions"]:
                inst["history"] = history_json(points, inst["key"],
                                               (p["provider"] for p in inst["providers"]))
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def status(request: Request) -> Response:
        health = report()
        routing = None if advice is None else {a.key: a for a in advice(health)}
        points = None if history is None else await history(PAGE_HISTORY)
        return HTMLResponse(render_status_page(health, API_PATH, routing, points),
                            headers={"Cache-Control": "no-store"})

    return [Route(API_PATH, institutions, methods=["GET", "HEAD"]),
            Route(STATUS_PATH, status, methods=["GET", "HEAD"])]
