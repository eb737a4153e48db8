"""Shared helpers for the sandbox tests (no tests here): a hand-driven clock, an in-process
client per provider, and OpenAPI response validation against the official specs."""

from __future__ import annotations

import base64
import copy
from collections.abc import AsyncIterator, Callable
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openapi_schema_validator import OAS30Validator, oas30_format_checker

from exporter.sandbox import (
    FINICITY_APP_KEY,
    FINICITY_PARTNER_ID,
    FINICITY_PARTNER_SECRET,
    MX_API_KEY,
    MX_CLIENT_ID,
    SandboxClock,
    create_app,
    load_scenario,
    runtime_of,
)
from tests.unit.conftest import Clock as FakeTime

SPECS = Path(__file__).resolve().parents[2].parent / "shared/reference/openapi"
MX_ACCEPT = "application/json"
MX_AUTH = "Basic " + base64.b64encode(f"{MX_CLIENT_ID}:{MX_API_KEY}".encode()).decode()
MX_HEADERS = {"Authorization": MX_AUTH, "Accept": MX_ACCEPT, "Accept-Version": "v20250224"}
"""What a v20250224 client sends on every call."""


SMALL = {"finicity": {"units": 300, "institutions": 8, "hostile_names": 3},
         "mx": {"units": 200, "institutions": 6, "hostile_names": 2}}


class Sandbox:
    """An app on a fake clock, with ready-made clients for both providers."""

    def __init__(self, overrides: dict[str, Any] | None = None, *, small: bool = True,
                 webhook_transport: httpx.AsyncBaseTransport | None = None):
        merged: dict[str, Any] = copy.deepcopy(SMALL) if small else {}
        for key, value in (overrides or {}).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        self.scenario = load_scenario(None, merged)
        self.time = FakeTime()
        self.app = create_app(self.scenario, SandboxClock(0, time_source=self.time),
                              webhook_transport=webhook_transport)
        self.runtime = runtime_of(self.app)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                      base_url="http://sandbox")

    async def close(self) -> None:
        await self.runtime.close()
        await self.http.aclose()

    async def token(self) -> str:
        r = await self.http.post(
            "/finicity/aggregation/v2/partners/authentication",
            headers={"Finicity-App-Key": FINICITY_APP_KEY, "Accept": "application/json"},
            json={"partnerId": FINICITY_PARTNER_ID, "partnerSecret": FINICITY_PARTNER_SECRET})
        assert r.status_code == 200, r.text
        return r.json()["token"]

    async def finicity(self, path: str, token: str, **params: Any) -> httpx.Response:
        return await self.http.get(
            f"/finicity{path}", params=params,
            headers={"Finicity-App-Key": FINICITY_APP_KEY, "Finicity-App-Token": token,
                     "Accept": "application/json"})

    async def mx(self, path: str, **params: Any) -> httpx.Response:
        return await self.http.get(f"/mx{path}", params=params,
                                   headers=MX_HEADERS)

    async def finicity_post(self, path: str, token: str, body: Any) -> httpx.Response:
        return await self.http.post(
            f"/finicity{path}", json=body,
            headers={"Finicity-App-Key": FINICITY_APP_KEY, "Finicity-App-Token": token,
                     "Accept": "application/json"})

    async def mx_post(self, path: str, body: Any, **headers: str) -> httpx.Response:
        return await self.http.post(f"/mx{path}", json=body, headers={
            **MX_HEADERS, **headers})

    async def advance(self, nights: int = 1) -> dict[str, Any]:
        r = await self.http.post("/sandbox/advance", params={"nights": nights})
        assert r.status_code == 200, r.text
        return r.json()

    async def state(self) -> dict[str, Any]:
        return (await self.http.get("/sandbox/state")).json()

    async def truth(self, **params: Any) -> dict[str, Any]:
        r = await self.http.get("/sandbox/truth", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    async def all_customer_ids(self, token: str) -> list[str]:
        ids, start = [], 1
        while True:
            body = (await self.finicity("/aggregation/v1/customers", token, start=start,
                                        limit=1000)).json()
            ids += [c["id"] for c in body["customers"]]
            if not body["moreAvailable"]:
                return ids
            start += 1000

    async def all_user_guids(self) -> list[str]:
        guids, page = [], 1
        while True:
            body = (await self.mx("/users", page=page, records_per_page=1000)).json()
            guids += [u["guid"] for u in body["users"]]
            if page >= body["pagination"]["total_pages"]:
                return guids
            page += 1


def sandbox_fixture() -> Callable[[], AsyncIterator[Sandbox]]:
    """The ``sb`` fixture of a sandbox test module (``sb = sandbox_fixture()``): a fresh
    in-process sandbox per test, closed after."""

    @pytest.fixture
    async def sb() -> AsyncIterator[Sandbox]:
        sandbox = Sandbox()
        yield sandbox
        await sandbox.close()

    return sb


@cache
def _spec(name: str) -> dict[str, Any]:
    return yaml.load((SPECS / name).read_text("utf-8"), Loader=yaml.CSafeLoader)


def finicity_spec() -> dict[str, Any]:
    return _spec("mastercard-openbanking-us.yaml")


def mx_spec(version: str = "v20250224") -> dict[str, Any]:
    spec = copy.deepcopy(_spec(f"mx-platform-api-{version}.yml"))
    # v20111101 types most_recent_job_guid as boolean by mistake; real payloads carry "JOB-…".
    job = spec["components"]["schemas"]["MemberResponse"]["properties"]["most_recent_job_guid"]
    job["type"] = "string"
    return spec


def schema_errors(spec: dict[str, Any], schema_name: str, instance: Any) -> list[str]:
    """Every way ``instance`` breaks ``#/components/schemas/<schema_name>`` (empty = valid)."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": spec["components"]}
    validator = OAS30Validator(root, format_checker=oas30_format_checker)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(instance)]
