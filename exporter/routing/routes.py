"""``GET /api/v1/routing`` on the metrics listener: the advice as JSON, or ``?format=ucp``.

Each request evaluates the advice from the current health report (so the answer is as fresh
as the snapshot); schema in docs/routing.md.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from exporter.health.report import HealthReport
from exporter.routing.advisor import Advisor

ROUTING_PATH = "/api/v1/routing"
FORMATS = ("json", "ucp")


def routing_routes(advisor: Advisor, report: Callable[[], HealthReport]) -> list[Route]:
    async def routing(request: Request) -> Response:
        fmt = request.query_params.get("format", "json")
        if fmt not in FORMATS:
            return JSONResponse({"error": f"format must be one of {', '.join(FORMATS)}"},
                                status_code=400)
        health = report()
        advice = advisor.update(health)
        body = (advisor.ucp(advice) if fmt == "ucp"
                else advisor.as_json(advice, health.generated_at))
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    return [Route(ROUTING_PATH, routing, methods=["GET", "HEAD"])]
