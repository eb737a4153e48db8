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

The sandbox also plays the partner's receiver of fix requests (the repair loop's
``remediation.endpoint``): ``POST /sandbox/partner/fix-requests`` takes the request body of
DESIGN.md (``id``, ``provider``, ``customer_id`` / ``user_guid``, ``login_id``, ``link``, …),
and ``users.fix_share`` of its users complete the repair ``users.fix_after_nights`` nights
later: they follow the ``link`` (through any redirects, e.g. the agent's ``/fix/<token>``)
to the sandbox's page and complete it, or repair the login in the app when there is no link.
A completed repair of a login with an expiring consent renews it (``consent_renewal``
requests; the listing counts those as ``renewed``).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import re
import time
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from exporter.sandbox.fleet import ProviderSim
from exporter.sandbox.ids import connection_id, find_connection, owner_id
from exporter.sandbox.links import ConnectLink, FixRequest
from exporter.sandbox.runtime import SandboxRuntime

PAGE_PATH = "/connect/fix/{token}"
_PAGE_RE = re.compile(r"/connect/fix/([A-Za-z0-9_-]+)")
SIGNATURE_TOLERANCE_SECONDS = 300

log = logging.getLogger(__name__)


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


# -- the partner's users -------------------------------------------------------------------

def _signature_ok(secret: str, header: str, raw: bytes) -> bool:
    """``X-OpenFinance-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``,
    with ``t`` within five minutes of this machine's clock."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    t, v1 = fields.get("t", ""), fields.get("v1", "")
    if not t.isdigit() or abs(time.time() - int(t)) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, v1.lower())


def _user_acts(request_id: str, share: float) -> bool:
    """Whether this request's user repairs (deterministic per request id)."""
    h = int.from_bytes(hashlib.sha256(request_id.encode()).digest()[:8], "big")
    return h / 2 ** 64 < share


def _user_delay(request_id: str, least: int, most: int | None) -> int:
    """How many nights after the request this user acts (deterministic per request id)."""
    if most is None or most <= least:
        return least
    h = int.from_bytes(hashlib.sha256(b"delay:" + request_id.encode()).digest()[:8], "big")
    return least + h % (most - least + 1)


async def receive_fix_request(rt: SandboxRuntime, request: Request) -> Response:
    """``POST /sandbox/partner/fix-requests``: the partner's receiver of fix requests."""
    raw = await request.body()
    secret = rt.scenario.users.request_secret
    if secret and not _signature_ok(secret, request.headers.get("x-openfinance-signature", ""),
                                    raw):
        rt.fix_request_counts["bad_signature"] += 1
        return JSONResponse({"error": "bad or missing X-OpenFinance-Signature"}, status_code=401)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    sim = _sim(rt, body.get("provider") if isinstance(body, dict) else None)
    request_id = body.get("id") if isinstance(body, dict) else None
    if sim is None or not isinstance(request_id, str) or not request_id:
        rt.fix_request_counts["malformed"] += 1
        return JSONResponse({"error": "expected a fix request: id, provider, owner and login"},
                            status_code=400)
    known = rt.fix_requests.get(request_id)
    if known is not None:
        rt.fix_request_counts["duplicate"] += 1
        return JSONResponse({"accepted": True, "duplicate": True, **known.public()})
    owner = body.get("customer_id" if sim.provider == "finicity" else "user_guid")
    login, link = body.get("login_id"), body.get("link")
    k = (find_connection(sim, str(owner), str(login))
         if isinstance(owner, str | int) and isinstance(login, str | int) else None)
    if k is None:
        rt.fix_request_counts["unknown_login"] += 1
        return JSONResponse({"accepted": False, "error": "no such login for that owner"},
                            status_code=422)
    night, users = rt.clock.night, rt.scenario.users
    acts = _user_acts(request_id, users.fix_share)
    delay = _user_delay(request_id, users.fix_after_nights, users.fix_after_max_nights)
    fix_request = FixRequest(request_id, sim.provider, k, link if isinstance(link, str) else None,
                             night, night + delay if acts else None,
                             owner_id=owner_id(sim, k), login_id=connection_id(sim, k),
                             institution_id=sim.institutions[sim.conn_inst[k]].id,
                             kind=str(body.get("kind")), code=str(body.get("code")))
    rt.fix_requests.add(fix_request)
    rt.fix_request_counts["accepted"] += 1
    if acts and delay == 0:
        rt.background(users_act(rt))
    return JSONResponse({"accepted": True, **fix_request.public()})


async def _follow(rt: SandboxRuntime, url: str, http: httpx.AsyncClient
                  ) -> ConnectLink | str:
    """The sandbox link a fix request's ``link`` leads to, through at most 5 redirects, or
    why not (e.g. ``HTTP 410``: the agent found nothing left to fix)."""
    for _ in range(6):
        match = _PAGE_RE.fullmatch(urlsplit(url).path)
        if match is not None:
            return rt.links.get(match.group(1)) or "an unknown sandbox link"
        response = await http.get(url, follow_redirects=False)
        if not response.is_redirect:
            return f"HTTP {response.status_code} instead of a redirect to a repair page"
        url = urljoin(url, response.headers["location"])
    return "too many redirects"


async def users_act(rt: SandboxRuntime) -> int:
    """Users whose repair is due complete it now; returns how many acted."""
    due = rt.fix_requests.due(rt.clock.night)
    if not due:
        return 0
    for fix_request in due:  # claimed, so a concurrent call does not act on them again
        fix_request.result = {"in_progress": True}
    async with httpx.AsyncClient(timeout=10) as http:
        for fix_request in due:
            if fix_request.link is None:
                fix_request.result = fix_connection(rt, fix_request.provider,
                                                    fix_request.connection)
                continue
            try:
                link = await _follow(rt, fix_request.link, http)
            except httpx.HTTPError as exc:
                link = type(exc).__name__
            if isinstance(link, ConnectLink) and link.unusable(rt.clock.now()) is not None:
                link = f"link {link.unusable(rt.clock.now())}"
            if isinstance(link, str):
                rt.fix_request_counts["link_failed"] += 1
                fix_request.result = {"fixed": False, "error": link}
                continue
            fix_request.result = complete(rt, link)
    return len(due)


async def new_night(rt: SandboxRuntime) -> None:
    """What follows a night change: its webhooks, then the users whose repair is due."""
    await rt.webhooks.sync()
    await users_act(rt)


async def list_fix_requests(rt: SandboxRuntime, request: Request) -> Response:
    results: dict[str, int] = {"fixed": 0, "nothing_to_fix": 0, "waiting": 0, "never": 0}
    for r in rt.fix_requests.all():
        if r.due_night is None:
            results["never"] += 1
        elif r.result is None or r.result.get("in_progress"):
            results["waiting"] += 1
        elif r.kind == "consent_renewal" and r.result.get("fixed"):
            results["renewed"] = results.get("renewed", 0) + 1  # a consent renewed
        else:
            results["fixed" if r.result.get("fixed") else "nothing_to_fix"] += 1
    return JSONResponse({"counts": dict(sorted(rt.fix_request_counts.items())),
                         "results": results,
                         "requests": [r.public() for r in rt.fix_requests.all()[-1000:]]})


ROUTES = [
    (["GET"], "/connect", list_links),
    (["POST"], "/partner/fix-requests", receive_fix_request),
    (["GET"], "/partner/fix-requests", list_fix_requests),
    (["POST"], "/connect/{token}/complete", complete_link),
    (["POST"], "/fix", fix_without_link),
]
