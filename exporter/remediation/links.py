"""``GET /fix/<token>``: the redirect behind ``remediation.link: redirect``.

The token (signed, expiring, one per episode) is what the partner puts in front of the user.
Each click asks the aggregator for a fresh link (an MX widget URL lives ten minutes and
serves once; a Finicity Fix URL about two hours) and answers 302. A bad, expired or
no-longer-needed token gets a small HTML page with the right status, never a stack trace;
clicks on a genuine token are rate-limited per token and overall; invalid tokens draw on a
budget of their own. While the agent stops, a click gets a "try again in a minute" page.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from exporter.aio import Gate
from exporter.remediation.signing import BadToken, read_token
from exporter.web.tokenbucket import TokenBucket

log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
             "X-Content-Type-Options": "nosniff"}
_MAX_TRACKED_TOKENS = 10_000


def page(status: int, title: str, text: str, headers: dict[str, str] | None = None) -> HTMLResponse:
    body = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width\">"
            f"<title>{html.escape(title)}</title></head>"
            f"<body style=\"font-family:sans-serif;max-width:32em;margin:3em auto\">"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}</p></body></html>")
    return HTMLResponse(body, status_code=status, headers={**_NO_STORE, **(headers or {})})


class ClickLimiter:
    """Clicks on genuine tokens: a fixed one-minute window per token, and a bucket for all of
    them (each costs a call to the aggregator). Invalid, expired and malformed tokens draw on
    a bucket of their own, so a flood of garbage never spends a real user's clicks."""

    def __init__(self, per_token_per_minute: int, global_per_second: float,
                 clock: Callable[[], float], invalid_per_second: float = 20.0):
        self.per_token = per_token_per_minute
        self.clock = clock
        self._valid = TokenBucket(global_per_second, max(global_per_second, 1.0), clock)
        self._invalid = TokenBucket(invalid_per_second, max(invalid_per_second, 1.0), clock)
        self.windows: dict[str, tuple[float, int]] = {}

    def allow_global(self) -> bool:
        return self._valid.allow()

    def allow_invalid(self) -> bool:
        return self._invalid.allow()

    def allow_token(self, token: str) -> bool:
        now = self.clock()
        minute = now // 60
        start, n = self.windows.get(token, (minute, 0))
        if start != minute:
            start, n = minute, 0
        if n >= self.per_token:
            return False
        if len(self.windows) >= _MAX_TRACKED_TOKENS:
            self.windows = {k: v for k, v in self.windows.items() if v[0] == minute}
        self.windows[token] = (start, n + 1)
        return True


def fix_route(loop, clock: Callable[[], float], gate: Gate | None = None) -> Route:
    """The Starlette route for ``loop`` (a :class:`~exporter.remediation.loop.RepairLoop`).
    ``gate``: closed when the agent stops; a click then gets a "try again" page (503)."""
    cfg = loop.cfg
    limiter = ClickLimiter(cfg.click_rate_per_token, cfg.click_rate_global, clock,
                           cfg.click_rate_invalid)
    gate = gate or Gate()
    busy = page(429, "Too many requests", "Please wait a minute and try again.",
                {"Retry-After": "60"})
    stopping = page(503, "Please try again in a minute",
                    "This service is restarting. Your link stays valid.", {"Retry-After": "60"})

    observer = loop.observer

    def answer(result: str, response: Response) -> Response:
        observer.fix_click(result)
        return response

    def refused(result: str, response: Response) -> Response:
        if not limiter.allow_invalid():
            result, response = "rate_limited", busy
        return answer(result, response)

    async def fix(request: Request) -> Response:
        if not gate.enter():
            return answer("stopping", stopping)
        try:
            return await click(request.path_params["token"])
        except RuntimeError:  # the store closed under a click the stop did not wait for
            return answer("stopping", stopping)
        finally:
            gate.leave()

    async def click(token: str) -> Response:
        try:
            episode_id, expires = read_token(loop.secret, token)
        except BadToken:
            return refused("invalid", page(400, "This link is not valid",
                                           "Please use the link exactly as you received it."))
        if clock() > expires:
            return refused("expired", page(410, "This link has expired",
                                           "Open the app to reconnect your bank account."))
        if not limiter.allow_token(token) or not limiter.allow_global():
            return answer("rate_limited", busy)
        ep = await loop.episode(episode_id)
        if ep is None or ep.closed_at is not None:
            return answer("nothing_to_fix", page(
                410, "Nothing to fix", "This connection is working again, or no longer "
                "exists. Nothing more to do."))
        try:
            url = await loop.fresh_link(ep.source, ep.owner_id, ep.login_id)
        except Exception as exc:
            log.warning("fix link not available for a click source=%s error=%s",
                        ep.source, type(exc).__name__)
            return answer("unavailable", page(
                502, "Please try again shortly",
                "We could not reach your bank connection service just now.",
                {"Retry-After": "60"}))
        return answer("redirected", RedirectResponse(url, status_code=302, headers=_NO_STORE))

    return Route("/fix/{token}", fix, methods=["GET"])


def fix_app(loop, clock: Callable[[], float], gate: Gate | None = None) -> Starlette:
    """A listener of its own for ``/fix/<token>`` (``remediation.listen_address``), for
    deployments without the webhook listener; anything else is a small 404 page."""

    async def not_found(request: Request, exc: Exception) -> Response:
        return page(404, "Not found", "There is nothing here.")

    return Starlette(routes=[fix_route(loop, clock, gate)], exception_handlers={404: not_found})
