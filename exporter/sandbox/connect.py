"""Connect Fix on the sandbox: the user's page behind a link, and what completing it does.

``GET /connect/fix/<token>`` is the page a Finicity Fix link or an MX widget URL opens (no
credentials: it is the end user's browser). ``?complete=1`` plays a user who finishes the
repair: the login is fixed (when its code was one a user can fix: credentials, MFA, a user
action; never an outage, a closed account or an unknown code), so the next read shows code
0 / CONNECTED with this moment as its attempt and success dates, and the webhooks go out
(Finicity ``done`` to the session's ``webhook`` or the configured URL; MX member webhook).
With a Finicity ``redirectUri`` the page then redirects there with
``?reason=complete&code=200``. The same completion is on the control API:
``POST /sandbox/connect/<token>/complete`` (JSON), and ``POST /sandbox/fix`` repairs a
login without a link, as a user fixing it inside the partner's app would.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from exporter.sandbox.fleet import ProviderSim
from exporter.sandbox.ids import connection_id, find_connection, owner_id
from exporter.sandbox.links import ConnectLink
from exporter.sandbox.runtime import SandboxRuntime

PAGE_PATH = "/connect/fix/{token}"


def fix_connection(rt: SandboxRuntime, provider: str, k: int, *,
                   link: ConnectLink | None = None) -> dict[str, Any]:
    """A user completes a repair of connection ``k`` now: fix it if it is fixable, send the
    webhooks, and say what happened."""
    sim = rt.fleet.sim(provider)
    before = rt.fleet.current_code(provider, k)
    fixed = rt.fleet.fix(provider, k)
    if fixed:
        rt.webhooks.fixed(provider, k, link.callback_payload if link is not None else None)
    if provider == "finicity":
        url = (link.webhook if link is not None and link.webhook
               else rt.webhooks.config.finicity_url if rt.webhooks.config else None)
        if url:
            rt.webhooks.finicity_event(
                url, owner_id(sim, k), "done", {}, login=k,
                webhook_data=link.webhook_data if link else None,
                extra_headers=link.webhook_headers if link else None)
    return {"provider": provider, "owner_id": owner_id(sim, k),
            "login_id": connection_id(sim, k), "fixed": fixed, "code_before": before,
            "code_after": rt.fleet.current_code(provider, k), "night": rt.clock.night,
            "at": rt.clock.now()}


def complete(rt: SandboxRuntime, link: ConnectLink) -> dict[str, Any]:
    if link.connection is None:
        result = {"provider": link.provider, "owner_id": link.owner_id, "login_id": None,
                  "fixed": False, "code_before": None, "code_after": None,
                  "night": rt.clock.night, "at": rt.clock.now()}
    else:
        result = fix_connection(rt, link.provider, link.connection, link=link)
    link.completions.append({"at": result["at"], "fixed": result["fixed"]})
    return result


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"</head><body><h1>{html.escape(title)}</h1>{body}"
        "<p><small>openfinance-exporter sandbox: a stand-in for the aggregator's Connect "
        "page.</small></p></body></html>", status_code=status)


def _usable(rt: SandboxRuntime, token: str) -> ConnectLink | tuple[int, str]:
    link = rt.links.get(token)
    if link is None:
        return 404, "unknown link"
    why = link.unusable(rt.clock.now())
    if why is not None:
        return 410, f"link {why}"
    return link


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(query=query))


async def fix_page(rt: SandboxRuntime, request: Request) -> Response:
    """``GET /connect/fix/<token>``: the repair page; ``?complete=1`` completes it."""
    found = _usable(rt, request.path_params["token"])
    if isinstance(found, tuple):
        status, why = found
        return _page("This link cannot be used", f"<p>{html.escape(why)}.</p>", status)
    link = found
    link.opened += 1
    if request.query_params.get("complete") not in ("1", "true"):
        return _page(f"Reconnect {link.institution}",
                     "<p>Sign in again to keep your account connected.</p>"
                     '<p><a href="?complete=1">Complete the repair</a></p>')
    result = complete(rt, link)
    if link.redirect_uri:
        return RedirectResponse(_with_query(link.redirect_uri,
                                            {"reason": "complete", "code": "200"}), 303)
    text = ("Your connection is repaired." if result["fixed"]
            else "There was nothing to repair here.")
    return _page(f"{link.institution}: done", f"<p>{text}</p>")


# -- control API (mounted under /sandbox by control_api) ------------------------------------

async def list_links(rt: SandboxRuntime, request: Request) -> Response:
    now = rt.clock.now()
    return JSONResponse({"issued": rt.links.issued,
                         "links": [link.public(now) for link in rt.links.all()[-1000:]]})


async def complete_link(rt: SandboxRuntime, request: Request) -> Response:
    found = _usable(rt, request.path_params["token"])
    if isinstance(found, tuple):
        status, why = found
        return JSONResponse({"error": why}, status_code=status)
    return JSONResponse(complete(rt, found))


def _sim(rt: SandboxRuntime, provider: str | None) -> ProviderSim | None:
    return rt.fleet.sim(provider) if provider in ("finicity", "mx") else None


async def fix_without_link(rt: SandboxRuntime, request: Request) -> Response:
    """``POST /sandbox/fix?provider=&owner_id=&login_id=``: a user repairs a login in the
    partner's app (no link). 404 when the ids do not name a login of that owner."""
    q = request.query_params
    sim = _sim(rt, q.get("provider"))
    if sim is None:
        return JSONResponse({"error": "provider must be finicity or mx"}, status_code=400)
    k = find_connection(sim, q.get("owner_id", ""), q.get("login_id", ""))
    if k is None:
        return JSONResponse({"error": "no such login for that owner"}, status_code=404)
    return JSONResponse(fix_connection(rt, sim.provider, k))


ROUTES = [
    (["GET"], "/connect", list_links),
    (["POST"], "/connect/{token}/complete", complete_link),
    (["POST"], "/fix", fix_without_link),
]
