"""Simulated MX Platform API endpoints, mounted under ``/mx``, answering as MX does today.

Since 2026-08-12 every call must send ``Accept-Version``: without it, or with a version MX
does not serve, the answer is 406. Two versions are served, each with its media type:
``v20250224`` (``Accept: application/json``; institutions list ``supported_products``; widget
URLs take ``data_request.products``) and ``v20111101`` (``Accept:
application/vnd.mx.api.v1+json``; ``supports_*`` flags). HTTP Basic auth
(``client_id:api_key``), ``page``/``records_per_page`` paging (10–1000; above 1000 falls back
to 25) with a ``pagination`` object. Member ``name`` is sometimes personal text, so a client
that uses it as the institution label is caught by the truth. Aggregation endpoints answer
403 and are counted.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from exporter.sandbox.credentials import MX_API_KEY, MX_CLIENT_ID
from exporter.sandbox.fleet import (
    MANUAL,
    NEVER,
    PERSONAL_MEMBER_NAMES,
    S_MISC,
    ProviderSim,
    mx_status_message,
)
from exporter.sandbox.ids import (
    find_connection,
    guid_index,
    institution_guid,
    member_guid,
    user_guid,
    user_index,
)
from exporter.sandbox.links import link_url
from exporter.sandbox.runtime import SandboxRuntime

MX_MEDIA_TYPE = "application/vnd.mx.api.v1+json"
V2025, V2011 = "v20250224", "v20111101"
MEDIA_TYPES = {V2025: "application/json", V2011: MX_MEDIA_TYPE}
"""The versions served (``Accept-Version``) and the media type each answers in."""
PRODUCTS = frozenset({"account_verification", "identity_verification", "transactions",
                      "transaction_history", "statements", "investments", "rewards"})
"""v20250224's ``SupportedProducts``."""


def _media_type(request: Request | None) -> str:
    version = getattr(request.state, "mx_version", V2025) if request is not None else V2025
    return MEDIA_TYPES[version]


def error(status: int, message: str, request: Request | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status,
                        media_type=_media_type(request))


def ok(request: Request, payload: dict[str, Any]) -> JSONResponse:
    return JSONResponse(payload, media_type=_media_type(request))


def version_of(request: Request) -> str | Response:
    """The version the call asked for, or MX's 406 refusal: ``Accept-Version`` is required
    (since 2026-08-12) and must be one MX serves, with an ``Accept`` that fits it."""
    version = request.headers.get("accept-version", "").strip()
    supported = ", ".join(MEDIA_TYPES)
    if not version:
        return error(406, "Request header must have required property 'accept-version' "
                     f"(supported versions: {supported})")
    if version not in MEDIA_TYPES:
        return error(406, f"API version {version[:40]!r} is not supported (supported versions: "
                     f"{supported})")
    accept = request.headers.get("accept", "*/*")
    media = MEDIA_TYPES[version]
    if media not in accept and "*/*" not in accept:
        return error(406, f"API version {version} answers in {media}; the Accept header does "
                     "not allow it")
    return version


def authenticate(rt: SandboxRuntime, request: Request) -> Response | None:
    """None when Basic auth and the version headers are right (the version is kept in
    ``request.state.mx_version``), else 401 / 406."""
    header = request.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    user = password = None
    if scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = None
    if user != MX_CLIENT_ID or password != MX_API_KEY:
        response = error(401, "Invalid MX-API-Key or MX-Client-ID provided")
        response.headers["WWW-Authenticate"] = 'Basic realm="MX Platform API"'
        return response
    version = version_of(request)
    if isinstance(version, Response):
        return version
    request.state.mx_version = version
    return None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _paging(request: Request) -> tuple[int, int]:
    try:
        page = max(1, int(request.query_params.get("page") or 1))
    except ValueError:
        page = 1
    try:
        per_page = int(request.query_params.get("records_per_page") or 25)
    except ValueError:
        per_page = 25
    if per_page > 1000:
        per_page = 25
    return page, max(10, per_page)


def _page(items: range | list[int], page: int, per_page: int) -> tuple[range | list[int], dict]:
    total = len(items)
    chunk = items[(page - 1) * per_page: page * per_page]
    return chunk, {"current_page": page, "per_page": per_page, "total_entries": total,
                   "total_pages": math.ceil(total / per_page)}


def user_json(sim: ProviderSim, idx: int) -> dict[str, Any]:
    h = sim.h(S_MISC, idx, 3)
    return {
        "guid": user_guid(sim, idx),
        "id": f"partner-user-{idx:06d}",
        "email": f"user{idx}@example.com",
        "is_disabled": False,
        "metadata": '{"segment": "retail"}' if h % 4 == 0 else None,
    }


def member_json(sim: ProviderSim, rt: SandboxRuntime, user: int, k: int, night: int) -> dict:
    h = sim.h(S_MISC, k, 4)
    inst = sim.institutions[sim.conn_inst[k]]
    role = sim.conn_role[k]
    clock = rt.clock
    status: str | None
    aggregated = succeeded = None
    if role == MANUAL:
        status = None
    elif role == NEVER:
        status = "CREATED"
    else:
        attempt_night, status = sim.last_attempt(k, night, role)
        aggregated = _iso(sim.attempt_time(k, attempt_night, role, clock))
        succeeded = _iso(sim.attempt_time(k, sim.last_success(k, night, role), role, clock))
    name = inst.name
    if h % 6 == 0:
        name = PERSONAL_MEMBER_NAMES[(h >> 8) % len(PERSONAL_MEMBER_NAMES)]
    message = None
    if status is not None:
        message = mx_status_message(status, inst.name)
    return {
        "aggregated_at": aggregated,
        "background_aggregation_is_disabled": False,
        "connection_status": status,
        "connection_status_message": message,
        "guid": member_guid(sim, k),
        "id": f"member-{k:07d}" if h % 2 else None,
        "institution_code": inst.id,
        "institution_guid": institution_guid(sim, inst.rank),
        "is_being_aggregated": False,
        "is_managed_by_user": role == MANUAL,
        "is_manual": role == MANUAL,
        "is_oauth": inst.rank % 3 == 0 and role != MANUAL,
        "metadata": None,
        "most_recent_job_detail_code": None,
        "most_recent_job_detail_text": None,
        # A JOB- string in real payloads, though v20111101 types it boolean by mistake.
        "most_recent_job_guid": None if aggregated is None else f"JOB-{h:016x}",
        "name": name,
        "needs_updated_credentials": status in ("DENIED", "PREVENTED"),
        "oauth_window_uri": None,
        "successfully_aggregated_at": succeeded,
        "use_cases": ["PFM"],
        "user_guid": user_guid(sim, user),
        "user_id": f"partner-user-{user:06d}",
    }


async def list_users(rt: SandboxRuntime, request: Request) -> Response:
    sim = rt.fleet.mx
    page, per_page = _paging(request)
    records: range | list[int] = range(sim.units)
    q = request.query_params
    if q.get("id"):
        tail = q["id"].removeprefix("partner-user-")
        records = [int(tail)] if tail.isdigit() and int(tail) < sim.units else []
    if q.get("email"):
        tail = q["email"].removeprefix("user").removesuffix("@example.com")
        records = [i for i in ([int(tail)] if tail.isdigit() else []) if i in records]
    if q.get("is_disabled", "").lower() == "true":
        records = []
    chunk, pagination = _page(records, page, per_page)
    return ok(request, {"users": [user_json(sim, i) for i in chunk], "pagination": pagination})


def _user(rt: SandboxRuntime, request: Request) -> int | None:
    sim = rt.fleet.mx
    return user_index(sim, request.path_params["user_guid"])


async def list_members(rt: SandboxRuntime, request: Request) -> Response:
    sim = rt.fleet.mx
    user = _user(rt, request)
    if user is None:
        return error(404, "We were unable to find the record you requested.", request)
    page, per_page = _paging(request)
    conns = range(sim.unit_conn_start[user], sim.unit_conn_start[user + 1])
    chunk, pagination = _page(conns, page, per_page)
    night = rt.clock.night
    return ok(request, {"members": [member_json(sim, rt, user, k, night) for k in chunk],
               "pagination": pagination})


def _member(rt: SandboxRuntime, request: Request) -> tuple[int, int] | None:
    sim = rt.fleet.mx
    user = _user(rt, request)
    if user is None:
        return None
    k = guid_index(sim, "MBR", 2, request.path_params["member_guid"], sim.connections)
    if k is None or not sim.unit_conn_start[user] <= k < sim.unit_conn_start[user + 1]:
        return None
    return user, k


async def read_member(rt: SandboxRuntime, request: Request) -> Response:
    found = _member(rt, request)
    if found is None:
        return error(404, "We were unable to find the record you requested.", request)
    return ok(request, {"member": member_json(rt.fleet.mx, rt, *found, rt.clock.night)})


async def read_member_status(rt: SandboxRuntime, request: Request) -> Response:
    found = _member(rt, request)
    if found is None:
        return error(404, "We were unable to find the record you requested.", request)
    m = member_json(rt.fleet.mx, rt, *found, rt.clock.night)
    status = m["connection_status"]
    return ok(request, {"member": {
        "aggregated_at": m["aggregated_at"],
        "challenges": [],
        "connection_status": status,
        "guid": m["guid"],
        "has_processed_accounts": m["aggregated_at"] is not None,
        "has_processed_account_numbers": m["aggregated_at"] is not None,
        "has_processed_transactions": m["aggregated_at"] is not None,
        "is_authenticated": status == "CONNECTED",
        "is_being_aggregated": m["is_being_aggregated"],
        "successfully_aggregated_at": m["successfully_aggregated_at"],
    }})


def institution_json(sim: ProviderSim, i: int, version: str = V2025) -> dict[str, Any]:
    """An institution in ``version``'s shape: v20250224 lists ``supported_products`` and
    adds ``guid``, ``is_hidden`` and ``created_at``; v20111101 has one flag per product."""
    inst = sim.institutions[i]
    site = f"https://{inst.domain}"
    flags = {
        "supports_account_identification": True,
        "supports_account_statement": inst.rank % 2 == 0,
        "supports_account_verification": True,
        "supports_oauth": inst.rank % 3 == 0,
        "supports_tax_document": False,
        "supports_transaction_history": True,
    }
    if version == V2025:
        products = ["account_verification", "identity_verification", "transactions",
                    "transaction_history"] + (["statements"] if inst.rank % 2 == 0 else [])
        flags = {"created_at": "2025-02-13T18:08:00+00:00",
                 "guid": institution_guid(sim, inst.rank), "is_hidden": False,
                 "supported_products": products, "supports_oauth": flags["supports_oauth"],
                 "supports_tax_document": False}
    return {
        "code": inst.id,
        "forgot_password_url": f"{site}/forgot-password",
        "forgot_username_url": f"{site}/forgot-username",
        "instructional_text": None,
        "instructional_text_steps": [],
        "is_disabled_by_client": False,
        "iso_country_code": "US",
        "medium_logo_url": f"https://content.example.com/logos/100x100/{inst.id}.png",
        "name": inst.name,
        "small_logo_url": f"https://content.example.com/logos/50x50/{inst.id}.png",
        **flags,
        "trouble_signing_in_url": f"{site}/login-trouble",
        "url": site,
    }


async def read_institution(rt: SandboxRuntime, request: Request) -> Response:
    sim = rt.fleet.mx
    code = request.path_params["institution_code"]
    for i, inst in enumerate(sim.institutions):
        if inst.id == code:
            return ok(request, {"institution": institution_json(sim, i,
                                                                request.state.mx_version)})
    return error(404, "We were unable to find the record you requested.", request)


async def request_widget_url(rt: SandboxRuntime, request: Request) -> Response:
    """``POST /users/{user_guid}/widget_urls`` (requestWidgetURL): a Connect widget URL on this
    sandbox; with ``current_member_guid`` it repairs that member. ``X-CALLBACK-PAYLOAD`` is
    echoed in the webhooks the repair sends."""
    sim = rt.fleet.mx
    user = _user(rt, request)
    if user is None:
        return error(404, "We were unable to find the record you requested.", request)
    try:
        body = await request.json()
    except ValueError:
        body = None
    config = body.get("widget_url") if isinstance(body, dict) else None
    if not isinstance(config, dict) or not isinstance(config.get("widget_type"), str):
        return error(400, "A widget_url object with a widget_type is required.", request)
    widget_type = config["widget_type"]
    if request.state.mx_version == V2025 and "data_request" in config:
        wanted = config["data_request"]
        products = wanted.get("products") if isinstance(wanted, dict) else None
        if (not isinstance(products, list)
                or not all(isinstance(p, str) and p in PRODUCTS for p in products)):
            return error(400, "data_request.products must list supported products.", request)
    member = config.get("current_member_guid")
    k = None
    if member is not None:
        if widget_type != "connect_widget" or not isinstance(member, str):
            return error(400, "current_member_guid is only for a connect_widget.", request)
        k = find_connection(sim, user_guid(sim, user), member)
        if k is None:
            return error(404, "We were unable to find the record you requested.", request)
    institution = sim.institutions[sim.conn_inst[k]].label if k is not None else "your bank"
    link = rt.links.issue("mx", k, user_guid(sim, user), member, institution, single_use=True,
                          callback_payload=request.headers.get("x-callback-payload"))
    return ok(request, {"widget_url": {"type": widget_type, "url": link_url(request, link),
                              "user_id": user_json(sim, user)["id"]}})


async def refuse_aggregation(rt: SandboxRuntime, request: Request) -> Response:
    return error(403, "Aggregation is refused by the openfinance-exporter sandbox: a monitor "
                 "must never trigger it.")


_MEMBER = "/users/{user_guid}/members/{member_guid}"
# (methods, path, handler, kind) — kind: "auth", "read", "connect" or "refresh".
ROUTES = [
    (["GET"], "/users", list_users, "read"),
    (["GET"], "/users/{user_guid}/members", list_members, "read"),
    (["GET"], _MEMBER, read_member, "read"),
    (["GET"], f"{_MEMBER}/status", read_member_status, "read"),
    (["GET"], "/institutions/{institution_code}", read_institution, "read"),
    (["POST"], "/users/{user_guid}/widget_urls", request_widget_url, "connect"),
    *[(["POST"], f"{_MEMBER}/{job}", refuse_aggregation, "refresh")
      for job in ("aggregate", "check_balance", "identify", "verify", "extend_history",
                  "fetch_statements", "fetch_tax_documents")],
]
