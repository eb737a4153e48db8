"""The sandbox's own control and ground-truth API under ``/sandbox`` (no auth, never faulted).

``GET /sandbox/state``, ``POST /sandbox/advance?nights=N``, ``GET /sandbox/truth``
(``?observed_from=K``), ``GET /sandbox/stats``, ``POST /sandbox/expire-tokens``,
``POST /sandbox/unlock``, ``POST /sandbox/declare``, ``GET``/``PUT /sandbox/webhooks``,
``GET /sandbox/connect``, ``POST /sandbox/connect/<token>/complete``, ``POST /sandbox/fix``.
See the package docstring for the payloads.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, get_args

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from exporter.sandbox import connect, credentials
from exporter.sandbox.fleet import ROLE_NAMES, ProviderSim
from exporter.sandbox.ids import connection_id, owner_id
from exporter.sandbox.runtime import SandboxRuntime
from exporter.sandbox.scenario import DeclaredStatus, WebhooksConfig


def _institution_event(sim: ProviderSim, index: int, start: int, end: int | None,
                       night: int) -> dict[str, Any]:
    inst = sim.institutions[index]
    return {
        "provider": sim.provider, "institution_id": inst.id, "institution": inst.label,
        "start_night": start, "end_night": end,
        "active": start <= night and (end is None or night < end),
        "connections": inst.connections, "accounts": inst.accounts,
    }


def state(rt: SandboxRuntime) -> dict[str, Any]:
    """The sandbox's current night, fleet and scripted events (``GET /sandbox/state``)."""
    clock, fleet, sc = rt.clock, rt.fleet, rt.scenario
    night = clock.night
    outages, otp, providers = [], [], {}
    for sim in (fleet.finicity, fleet.mx):
        for o in sim.outages:
            event = _institution_event(sim, o.inst, o.start_night, o.end_night, night)
            event["kind"] = o.kind
            if sim.provider == "finicity":
                event["declared_status"] = o.declared_status
            outages.append(event)
        if sim.otp_inst >= 0:
            event = _institution_event(sim, sim.otp_inst, sim.cfg.otp.start_night, None, night)
            roles = [r for k, r in enumerate(sim.conn_role) if sim.conn_inst[k] == sim.otp_inst]
            event["loop_connections"] = roles.count(ROLE_NAMES.index("otp_loop"))
            event["relapse_connections"] = roles.count(ROLE_NAMES.index("otp_relapse"))
            otp.append(event)
        role_counts: dict[str, int] = {}
        for r in set(sim.conn_role):
            role_counts[ROLE_NAMES[r]] = sim.conn_role.count(r)
        providers[sim.provider] = {
            "units": sim.units,
            "connections": sim.connections,
            "accounts": sim.accounts,
            "roles": dict(sorted(role_counts.items())),
            "institutions": [
                {"institution_id": i.id, "institution": i.label, "name": i.name,
                 "hostile_name": i.hostile, "connections": i.connections,
                 "accounts": i.accounts, "domain": i.domain,
                 **({"declared_status": sim.declared_status(n, night)}
                    if sim.provider == "finicity" else {})}
                for n, i in enumerate(sim.institutions)
            ],
        }
    providers["finicity"]["testing_customers"] = sc.finicity_testing_customers
    return {
        "night": night,
        "night_seconds": clock.night_seconds,
        "mode": clock.mode,
        "now": clock.now(),
        "night_started_at": clock.night_start(night),
        "next_night_at": clock.next_night_at(),
        "seed": sc.seed,
        "finicity_start_semantics": sc.finicity_start_semantics,
        "otp_streak": sc.otp_streak,
        "outages": outages,
        "otp": otp,
        "fleet": providers,
        "faults": sc.faults.model_dump(),
        "refresh_calls": rt.refresh_total,
        "finicity_partner_locked": rt.finicity_locked,
        "paths": {"finicity": "/finicity", "mx": "/mx", "control": "/sandbox"},
        "credentials": {
            "finicity": {"app_key": credentials.FINICITY_APP_KEY,
                         "partner_id": credentials.FINICITY_PARTNER_ID,
                         "partner_secret": credentials.FINICITY_PARTNER_SECRET},
            "mx": {"client_id": credentials.MX_CLIENT_ID, "api_key": credentials.MX_API_KEY},
        },
    }


async def get_state(rt: SandboxRuntime, request: Request) -> Response:
    return JSONResponse(state(rt))


async def advance(rt: SandboxRuntime, request: Request) -> Response:
    raw = request.query_params.get("nights", "1")
    try:
        nights = int(raw)
    except ValueError:
        nights = -1
    if not 0 <= nights <= 10_000:
        return JSONResponse({"error": "nights must be an integer from 0 to 10000"},
                            status_code=400)
    rt.clock.advance(nights)
    await connect.new_night(rt)
    return JSONResponse(state(rt))


async def truth(rt: SandboxRuntime, request: Request) -> Response:
    raw = request.query_params.get("observed_from", "0")
    try:
        observed_from = max(0, int(raw))
    except ValueError:
        return JSONResponse({"error": "observed_from must be an integer"}, status_code=400)
    night = rt.clock.night
    if rt.fleet.finicity.accounts + rt.fleet.mx.accounts > 50_000:
        # A big fleet takes a while: keep serving the provider APIs meanwhile.
        result = await asyncio.to_thread(rt.fleet.truth, observed_from, night)
    else:
        result = rt.fleet.truth(observed_from, night)
    return JSONResponse(result)


def login_truth(rt: SandboxRuntime, provider: str) -> list[dict[str, Any]]:
    """Every login (Finicity institution login, MX member) as it reads now: its accounts'
    codes, whether one of them is fixable, whether all are ok."""
    sim, catalog, night = rt.fleet.sim(provider), rt.fleet.catalog, rt.clock.night
    out = []
    for k in range(sim.connections):
        codes = [rt.fleet.current_code_on(sim, k, night, role) for role in sim.account_roles(k)]
        out.append({
            "provider": provider, "owner_id": owner_id(sim, k), "login_id": connection_id(sim, k),
            "institution_id": sim.institutions[sim.conn_inst[k]].id, "codes": codes,
            "fixable": any(catalog.lookup(provider, c).fixable for c in codes),
            "ok": all(c == sim.ok_code for c in codes)})
    return out


async def truth_logins(rt: SandboxRuntime, request: Request) -> Response:
    """``GET /sandbox/truth/logins?provider=finicity|mx``: :func:`login_truth` tonight."""
    provider = request.query_params.get("provider")
    if provider not in ("finicity", "mx"):
        return JSONResponse({"error": "provider must be finicity or mx"}, status_code=400)
    logins = await asyncio.to_thread(login_truth, rt, provider)
    return JSONResponse({"night": rt.clock.night, "logins": logins})


async def stats(rt: SandboxRuntime, request: Request) -> Response:
    return JSONResponse(rt.stats_json())


async def expire_tokens(rt: SandboxRuntime, request: Request) -> Response:
    """Forget every Finicity token, as if all had aged out (for tests over real HTTP)."""
    expired = len(rt.tokens)
    past = rt.clock.now() - rt.scenario.token_lifetime_seconds - 1
    for token in rt.tokens:
        rt.tokens[token] = past
    return JSONResponse({"expired": expired})


async def unlock(rt: SandboxRuntime, request: Request) -> Response:
    rt.finicity_locked = False
    rt.auth_failures = 0
    return JSONResponse({"finicity_partner_locked": False})


async def declare(rt: SandboxRuntime, request: Request) -> Response:
    """``POST /sandbox/declare`` ``{"institution_id": "…", "status": "offline"}``: Finicity
    declares that status for the institution from now on (``status: null``: back to the
    scenario's). Only Finicity declares statuses."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "status" not in body:
        return JSONResponse({"error": "expected {institution_id, status}"}, status_code=400)
    status = body["status"]
    if status is not None and status not in get_args(DeclaredStatus):
        return JSONResponse({"error": f"status must be one of {list(get_args(DeclaredStatus))} "
                                      "or null"}, status_code=400)
    sim = rt.fleet.finicity
    ref = str(body.get("institution_id"))
    for i, inst in enumerate(sim.institutions):
        if inst.id == ref:
            rt.fleet.declare("finicity", i, status)
            return JSONResponse({"institution_id": inst.id,
                                 "declared_status": sim.declared_status(i, rt.clock.night)})
    return JSONResponse({"error": "no such Finicity institution"}, status_code=404)


async def get_webhooks(rt: SandboxRuntime, request: Request) -> Response:
    return JSONResponse(rt.webhooks.stats_json())


async def put_webhooks(rt: SandboxRuntime, request: Request) -> Response:
    """``PUT /sandbox/webhooks`` with the scenario's ``webhooks`` mapping (null or no body:
    none): send events there from now on."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        return JSONResponse({"error": "expected a JSON object or null"}, status_code=400)
    try:
        config = None if body is None else WebhooksConfig.model_validate(body)
    except ValidationError as exc:
        return JSONResponse({"error": exc.errors(include_url=False, include_context=False)},
                            status_code=400)
    rt.webhooks.configure(config)
    return JSONResponse(rt.webhooks.stats_json())


ROUTES = [
    (["GET"], "/state", get_state),
    (["POST"], "/advance", advance),
    (["GET"], "/truth", truth),
    (["GET"], "/truth/logins", truth_logins),
    (["GET"], "/stats", stats),
    (["POST"], "/expire-tokens", expire_tokens),
    (["POST"], "/unlock", unlock),
    (["POST"], "/declare", declare),
    (["GET"], "/webhooks", get_webhooks),
    (["PUT"], "/webhooks", put_webhooks),
    *connect.ROUTES,
]
