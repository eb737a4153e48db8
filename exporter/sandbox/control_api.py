"""The sandbox's own control and ground-truth API under ``/sandbox`` (no auth, never faulted).

``GET /sandbox/state``, ``POST /sandbox/advance?nights=N``, ``GET /sandbox/truth``
(``?observed_from=K``), ``GET /sandbox/stats``, ``POST /sandbox/expire-tokens``,
``POST /sandbox/unlock``. See the package docstring for the payloads.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from exporter.sandbox import credentials
from exporter.sandbox.fleet import ROLE_NAMES, ProviderSim
from exporter.sandbox.runtime import SandboxRuntime


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
        window = sim.outage_window()
        if window is not None:
            outages.append(_institution_event(sim, sim.outage_inst, *window, night))
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
                 "accounts": i.accounts}
                for i in sim.institutions
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


ROUTES = [
    (["GET"], "/state", get_state),
    (["POST"], "/advance", advance),
    (["GET"], "/truth", truth),
    (["GET"], "/stats", stats),
    (["POST"], "/expire-tokens", expire_tokens),
    (["POST"], "/unlock", unlock),
]
