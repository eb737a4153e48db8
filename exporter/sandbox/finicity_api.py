"""Simulated Mastercard Open Finance US (Finicity) endpoints, mounted under ``/finicity``.

Only what a read-only monitor calls, with the spec's field types: customer dates as epoch
*strings*, account dates as epoch *integers*, ``institutionLoginId`` an integer, ids strings,
``aggregationStatusCode`` absent until the first aggregation. Refresh endpoints answer 403
and are counted (a monitor must never call them).
"""

from __future__ import annotations

import hashlib
import secrets
import string
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from exporter.sandbox.credentials import (
    FINICITY_APP_KEY,
    FINICITY_PARTNER_ID,
    FINICITY_PARTNER_SECRET,
)
from exporter.sandbox.fleet import (
    ACCOUNT_TYPES,
    FINICITY_ACCOUNT_BASE,
    FINICITY_CUSTOMER_BASE,
    FINICITY_LOGIN_BASE,
    FIRST_NAMES,
    LAST_NAMES,
    NEVER,
    S_MISC,
    ProviderSim,
)
from exporter.sandbox.ids import find_connection
from exporter.sandbox.links import link_url
from exporter.sandbox.runtime import SandboxRuntime

_TOKEN_ALPHABET = string.ascii_letters + string.digits
_DAY = 86400


def error(http_status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"code": code, "message": message, **extra}, status_code=http_status)


def authenticate(rt: SandboxRuntime, request: Request) -> Response | None:
    """None when the app key and token are good, else the spec's 401 answer."""
    key = request.headers.get("finicity-app-key")
    if not key:
        return error(401, "10026", "Missing parameter (Finicity-App-Key)")
    if key != FINICITY_APP_KEY:
        return error(401, "10027", "Invalid parameter (Finicity-App-Key)")
    token = request.headers.get("finicity-app-token")
    if not token:
        return error(401, "10024", "Missing parameter (Finicity-App-Token)")
    issued = rt.tokens.get(token)
    if issued is None:
        return error(401, "10022", "Invalid (Finicity-App-Token)")
    if rt.clock.now() - issued >= rt.scenario.token_lifetime_seconds:
        return error(401, "10023", "Expired (Finicity-App-Token)")
    return None


async def create_token(rt: SandboxRuntime, request: Request) -> Response:
    key = request.headers.get("finicity-app-key")
    if not key:
        return error(401, "10026", "Missing parameter (Finicity-App-Key)")
    if key != FINICITY_APP_KEY:
        return error(401, "10027", "Invalid parameter (Finicity-App-Key)")
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "partnerId" not in body or "partnerSecret" not in body:
        return error(400, "10002", "Invalid request body: partnerId and partnerSecret required")
    good = (body.get("partnerId") == FINICITY_PARTNER_ID
            and body.get("partnerSecret") == FINICITY_PARTNER_SECRET)
    if rt.finicity_locked or not good:
        rt.auth_failures += 1
        limit = rt.scenario.finicity_lockout_after
        if limit and rt.auth_failures >= limit:
            rt.finicity_locked = True
        return error(401, "10001", "Invalid credentials")
    rt.auth_failures = 0
    now = rt.clock.now()
    if len(rt.tokens) > 1000:
        horizon = now - 2 * rt.scenario.token_lifetime_seconds
        for old in [t for t, at in rt.tokens.items() if at < horizon]:
            del rt.tokens[old]
    token = "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(20))
    rt.tokens[token] = now
    rt.tokens_issued += 1
    return JSONResponse({"token": token})


def _customer_index(sim: ProviderSim, rt: SandboxRuntime, raw: str) -> int | None:
    if not raw.isdigit():
        return None
    idx = int(raw) - FINICITY_CUSTOMER_BASE
    total = sim.units + rt.scenario.finicity_testing_customers
    return idx if 0 <= idx < total else None


def _username(idx: int) -> str:
    return f"customer{idx:07d}"


def customer_json(sim: ProviderSim, rt: SandboxRuntime, idx: int) -> dict[str, Any]:
    h = sim.h(S_MISC, idx, 1)
    created = rt.clock.night_start(0) - (30 + h % 1500) * _DAY - h % _DAY
    modified = created + (h >> 20) % (20 * _DAY)
    out = {
        "id": str(FINICITY_CUSTOMER_BASE + idx),
        "username": _username(idx),
        "firstName": FIRST_NAMES[h % len(FIRST_NAMES)],
        "lastName": LAST_NAMES[(h >> 8) % len(LAST_NAMES)],
        "type": "active" if idx < sim.units else "testing",
        "createdDate": str(created),
        "lastModifiedDate": str(modified),
    }
    if h % 3 == 0:
        out["email"] = f"customer{idx}@example.com"
    return out


def _int_param(request: Request, name: str, default: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        return None


async def list_customers(rt: SandboxRuntime, request: Request) -> Response:
    sim = rt.fleet.finicity
    start = _int_param(request, "start", 1)
    if start is None or start < 1:
        return error(400, "41003", "Start index cannot be less than one")
    limit = _int_param(request, "limit", 25)
    if limit is None or limit < 1:
        return error(400, "41004", "Limit cannot be less than one")
    limit = min(limit, 1000)
    n_active, n_total = sim.units, sim.units + rt.scenario.finicity_testing_customers
    kind = request.query_params.get("type", "")
    if kind == "active":
        records: range | list[int] = range(0, n_active)
    elif kind == "testing":
        records = range(n_active, n_total)
    elif kind == "":
        records = range(0, n_total)
    else:
        return error(400, "41002", "Invalid customer type (use active, testing or empty)")
    username = request.query_params.get("username")
    if username is not None:
        idx = int(username[8:]) if username[:8] == "customer" and username[8:].isdigit() else -1
        records = [idx] if idx in records else []
    search = (request.query_params.get("search") or "").strip().lower()
    if search:
        records = [i for i in records
                   if search in " ".join(str(v) for v in customer_json(sim, rt, i).values()).lower()]
    page_numbers = rt.scenario.finicity_start_semantics == "page"
    offset = (start - 1) * limit if page_numbers else start - 1
    chunk = records[offset: offset + limit]
    found = len(records)
    return JSONResponse({
        "found": found,
        "displaying": len(chunk),
        "moreAvailable": offset + len(chunk) < found,
        "customers": [customer_json(sim, rt, i) for i in chunk],
    })


def account_json(sim: ProviderSim, rt: SandboxRuntime, cust: int, k: int, j: int, role: int,
                 night: int, *, simple: bool = False) -> dict[str, Any]:
    """Account ``j`` (0-based within login ``k``) of customer ``cust`` as of ``night``."""
    a = sim.conn_acct_start[k] + j
    h = sim.h(S_MISC, a, 2)
    inst = sim.institutions[sim.conn_inst[k]]
    acct_type, acct_name = ACCOUNT_TYPES[h % len(ACCOUNT_TYPES)]
    if (h >> 5) % 7 == 0:
        acct_name = f"{FIRST_NAMES[(h >> 9) % len(FIRST_NAMES)]}'s {acct_name.lower()}"
    clock = rt.clock
    created = clock.night_start(0) - (10 + (h >> 12) % 900) * _DAY - (h >> 24) % _DAY
    digits = f"{(h >> 16) % 10**10:010d}"
    out: dict[str, Any] = {
        "id": str(FINICITY_ACCOUNT_BASE + a),
        "number": digits,
        "accountNumberDisplay": digits[-4:],
        "realAccountNumberLast4": digits[-4:],
        "name": acct_name,
        "accountNickname": acct_name,
        "balance": round(((h >> 30) % 2_000_000) / 100 - (5000 if acct_type == "creditCard" else 0),
                         2),
        "type": acct_type,
        "status": "active",
        "customerId": str(FINICITY_CUSTOMER_BASE + cust),
        "institutionId": inst.id,
        "createdDate": created,
        "lastUpdatedDate": created,
        "linkedAccountDate": created,
        "marketSegment": "personal",
        "currency": "USD",
        "institutionLoginId": FINICITY_LOGIN_BASE + k,
        "authorizationExpires": False,
        "displayPosition": j + 1,
    }
    consent = sim.consent_dates(k, night, clock)
    if consent is not None:  # an OAuth consent with an end (ints, as the spec types them)
        out["authorizationStartDate"], out["authorizationEndDate"] = consent
        out["authorizationExpires"] = True
    if role != NEVER:
        attempt_night, code = sim.last_attempt(k, night, role)
        attempt = int(sim.attempt_time(k, attempt_night, role, clock))
        success = int(sim.attempt_time(k, sim.last_success(k, night, role), role, clock))
        out["aggregationStatusCode"] = int(code)
        out["aggregationAttemptDate"] = attempt
        out["aggregationSuccessDate"] = success
        out["lastUpdatedDate"] = attempt
        out["balanceDate"] = success
    if simple:
        keep = ("id", "accountNumberDisplay", "name", "type", "aggregationStatusCode", "status",
                "customerId", "institutionId", "aggregationSuccessDate",
                "aggregationAttemptDate", "createdDate", "currency", "institutionLoginId",
                "authorizationExpires", "authorizationStartDate", "authorizationEndDate",
                "displayPosition", "linkedAccountDate")
        out = {key: out[key] for key in keep if key in out}
    return out


async def customer_accounts(rt: SandboxRuntime, request: Request, simple: bool = False) -> Response:
    sim = rt.fleet.finicity
    idx = _customer_index(sim, rt, request.path_params["customerId"])
    if idx is None:
        return error(404, "14001", "Customer not found.")
    accounts: list[dict[str, Any]] = []
    if idx < sim.units:
        night = rt.clock.night
        for k in range(sim.unit_conn_start[idx], sim.unit_conn_start[idx + 1]):
            for j, role in enumerate(sim.account_roles(k)):
                accounts.append(account_json(sim, rt, idx, k, j, role, night, simple=simple))
    return JSONResponse({"accounts": accounts})


async def customer_accounts_simple(rt: SandboxRuntime, request: Request) -> Response:
    return await customer_accounts(rt, request, simple=True)


def institution_json(sim: ProviderSim, rt: SandboxRuntime, i: int) -> dict[str, Any]:
    inst = sim.institutions[i]
    status = sim.declared_status(i, rt.clock.night)
    slug = inst.domain.removeprefix("www.").removesuffix(".example.com")
    out: dict[str, Any] = {
        "id": int(inst.id),
        "name": inst.name,
        "transAgg": True, "ach": True, "stateAgg": False, "voi": True, "voa": True,
        "aha": False, "availBalance": False, "accountOwner": True,
        "oauthEnabled": inst.rank % 3 == 0,
        "urlHomeApp": f"https://{inst.domain}",
        "urlLogonApp": f"https://online.{slug}.example.com/login",
        "phone": f"1-800-555-{1000 + inst.rank:04d}",
        "currency": "USD",
        "email": f"support@{slug}.example.com",
        "status": status,
        "productionStatus": production_status(status),
        "timeZone": "America/Denver",
        "address": {"city": "Salt Lake City", "state": "UT", "country": "USA",
                    "postalCode": "84101", "addressLine1": f"{100 + inst.rank} Main Street"},
    }
    if inst.display_name is not None:
        out["displayName"] = inst.display_name
    return out


def production_status(status: str) -> dict[str, str]:
    """``productionStatus`` (beta) to go with a declared ``status``: overall the same where
    the enum allows it, each product online, or offline while the institution is not."""
    overall = status if status in ("online", "offline", "maintenance", "testing") else "online"
    product = "online" if overall in ("online", "testing") else "offline"
    return {"overallStatus": overall, **dict.fromkeys(
        ("transAgg", "stateAgg", "voa", "voi", "ach", "aha"), product)}


async def get_institution(rt: SandboxRuntime, request: Request) -> Response:
    sim = rt.fleet.finicity
    raw = request.path_params["institutionId"]
    for i, inst in enumerate(sim.institutions):
        if inst.id == raw:
            return JSONResponse({"institution": institution_json(sim, rt, i)})
    return error(404, "14006", "Institution not found.")


def _id_text(value: Any) -> str | None:
    """An id the spec types as a string; a number is accepted too (clients send both)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    return value if isinstance(value, str) and value else None


async def generate_fix(rt: SandboxRuntime, request: Request) -> Response:
    """``POST /connect/v2/generate/fix`` (GenerateFixConnectUrl): a Fix link for one
    institution login, ``{"link": …}``, pointing at this sandbox's ``/connect/fix/<token>``."""
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return error(400, "10002", "Invalid request body: a JSON object is required")
    partner, customer, login = (_id_text(body.get(key)) for key in
                                ("partnerId", "customerId", "institutionLoginId"))
    if partner is None or customer is None or login is None:
        return error(400, "10002", "Invalid request body: partnerId, customerId and "
                     "institutionLoginId are required")
    if partner != FINICITY_PARTNER_ID:
        return error(400, "10002", "partnerId does not match the token's partner")
    sim = rt.fleet.finicity
    idx = _customer_index(sim, rt, customer)
    if idx is None:
        return error(400, "10010", "Customer ID does not exist or does not belong to this "
                     "partner")
    k = find_connection(sim, customer, login)
    if k is None:
        return error(404, "38007", "No accounts found for the institution login")
    session: dict[str, Any] = {}
    for key, name, kind in (("redirectUri", "redirect_uri", str), ("webhook", "webhook", str),
                            ("webhookData", "webhook_data", dict),
                            ("webhookHeaders", "webhook_headers", dict)):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, kind):
            return error(400, "10002", f"Invalid request body: {key} has the wrong type")
        session[name] = value
    if "webhook_headers" in session:
        session["webhook_headers"] = {str(h): str(v)
                                      for h, v in session["webhook_headers"].items()}
    inst = sim.institutions[sim.conn_inst[k]]
    link = rt.links.issue("finicity", k, customer, login, inst.label,
                          single_use=body.get("singleUseUrl") is True, **session)
    ms = int(link.issued_at * 1000)
    query = urlencode({
        "customerId": customer, "institutionId": inst.id, "partnerId": partner,
        "signature": hashlib.sha256(link.token.encode()).hexdigest(), "timestamp": ms,
        "ttl": int(link.expires_at * 1000), "type": "fix"})
    return JSONResponse({"link": f"{link_url(request, link)}?{query}"})


async def refuse_refresh(rt: SandboxRuntime, request: Request) -> Response:
    return error(403, "10403", "Refresh is refused by the openfinance-exporter sandbox: a "
                 "monitor must never trigger aggregation.", status="403")


# (methods, path, handler, kind) — kind: "auth", "read", "connect" or "refresh".
ROUTES = [
    (["POST"], "/connect/v2/generate/fix", generate_fix, "connect"),
    (["POST"], "/aggregation/v2/partners/authentication", create_token, "auth"),
    (["GET"], "/aggregation/v1/customers", list_customers, "read"),
    (["GET"], "/aggregation/v1/customers/{customerId}/accounts", customer_accounts, "read"),
    (["GET"], "/aggregation/v1/customers/{customerId}/accounts/simple",
     customer_accounts_simple, "read"),
    (["GET"], "/institution/v2/institutions/{institutionId}", get_institution, "read"),
    (["POST"], "/aggregation/v1/customers/{customerId}/accounts", refuse_refresh, "refresh"),
    (["POST"], "/aggregation/v2/customers/{customerId}/accounts", refuse_refresh, "refresh"),
    (["POST"], "/aggregation/v1/customers/{customerId}/institutionLogins/{institutionLoginId}"
     "/accounts", refuse_refresh, "refresh"),
    (["POST"], "/aggregation/v2/customers/{customerId}/institutionLogins/{institutionLoginId}"
     "/accounts", refuse_refresh, "refresh"),
    (["POST"], "/aggregation/customers/{customerId}/transactions/refreshes", refuse_refresh,
     "refresh"),
]
