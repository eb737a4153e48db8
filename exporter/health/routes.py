"""Starlette routes of institution health, mounted on the metrics listener.

``GET /api/v1/institutions`` returns :meth:`HealthReport.as_json` (schema in
docs/institution-health.md; a partner's Connect flow can use it to pick an aggregator);
``GET /status`` the same as an HTML page. Both are built from the current snapshot on
each request.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from exporter.health.page import render_status_page
from exporter.health.report import HealthReport

API_PATH = "/api/v1/institutions"
STATUS_PATH = "/status"


def health_routes(report: Callable[[], HealthReport]) -> list[Route]:
    async def institutions(request: Request) -> Response:
        return JSONResponse(report().as_json(), headers={"Cache-Control": "no-store"})

    async def status(request: Request) -> Response:
        return HTMLResponse(render_status_page(report(), API_PATH),
                            headers={"Cache-Control": "no-store"})

    return [Route(API_PATH, institutions, methods=["GET", "HEAD"]),
            Route(STATUS_PATH, status, methods=["GET", "HEAD"])]
