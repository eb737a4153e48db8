"""MX Platform API (v20111101): one sweep = users walk + members per user; the member is the unit.

HTTP Basic with ``client_id:api_key``, no token. Read-only: never asks for an aggregation.
Institution names come from ``GET /institutions/{institution_code}``, never from
``member.name``, which users can set to personal text.
"""

from __future__ import annotations

import asyncio
import logging
import random as _random
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from exporter.catalog import normalise_code
from exporter.config import MxSourceConfig
from exporter.records import AccountStatus, clean_label
from exporter.sources.base import (
    AuthLockoutRisk,
    NullObserver,
    Source,
    SweepReport,
    SweepSink,
    UpstreamObserver,
)
from exporter.sources.http import (
    Clock,
    MalformedResponse,
    RecordParser,
    Sleep,
    UpstreamClient,
    UpstreamStatusError,
    parse_id,
)
from exporter.sources.sweep import TtlCache, institution_body, sweep_units

log = logging.getLogger(__name__)

USERS_ROUTE = "/users"
MEMBERS_ROUTE = "/users/{user_guid}/members"
INSTITUTION_ROUTE = "/institutions/{institution_code}"
ACCEPT_V1 = "application/vnd.mx.api.v1+json"
MAX_PAGES = 10_000  # safety net per list, whatever total_pages says


def _as_int(raw: object) -> int | None:
    text = parse_id(raw)
    return int(text) if text is not None and text.isdigit() else None


def _is_true(raw: object) -> bool:
    return raw is True or (isinstance(raw, str) and raw.strip().lower() == "true")


def _is_false(raw: object) -> bool:
    return raw is False or (isinstance(raw, str) and raw.strip().lower() == "false")


class MxSource(Source):
    """Polls every member of one MX client, read-only."""

    provider = "mx"

    def __init__(
        self,
        config: MxSourceConfig,
        observer: UpstreamObserver | None = None,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Clock = _random.random,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        if config.client_id is None or config.api_key is None:
            raise ValueError(f"source {config.name}: client_id and api_key are required")
        self.name = config.name
        self.config = config
        self.observer = observer or NullObserver()
        self.http = UpstreamClient(
            source=config.name,
            base_url=config.base_url,
            http=config.http,
            observer=self.observer,
            headers={"Accept": ACCEPT_V1},
            auth=httpx.BasicAuth(config.client_id, config.api_key.get_secret_value()),
            transport=transport,
            clock=clock,
            monotonic=monotonic,
            sleep=sleep,
            random=random,
        )
        self._parser = RecordParser(config.name, self.observer, clock)
        self._institutions: TtlCache[str, str] = TtlCache(self._load_institution, clock)
        self._records_per_page = min(max(config.page_size, 10), 1000)
        self.stopped = False

    async def aclose(self) -> None:
        await self.http.aclose()

    async def sweep(self, sink: SweepSink) -> SweepReport:
        """Walk the users, then each one's members; a failed user makes the sweep partial."""
        self._check_stopped()
        return await sweep_units(
            self.name, sink, self._user_listing, self._user_members,
            shard=self.config.shard, concurrency=self.config.http.max_concurrency,
            units="users")

    async def _user_listing(self) -> tuple[list[str], bool]:
        return await self._user_guids(), True

    # ------------------------------------------------------------------ requests

    def _check_stopped(self) -> None:
        if self.stopped:
            raise AuthLockoutRisk(f"{self.name}: credentials were refused; fix them and restart")

    async def _get(self, route: str, path: Mapping[str, object] | None = None,
                   params: Mapping[str, object] | None = None) -> Any:
        """GET; a 401 means the client id / API key are wrong: stop the source."""
        self._check_stopped()
        try:
            return await self.http.get_json(route, path, params=params)
        except UpstreamStatusError as exc:
            if exc.http_status != 401:
                raise
        if not self.stopped:
            self.stopped = True
            self.observer.auth_failure(self.name)
            log.error("%s: MX refused the client id / API key (HTTP 401); source stopped", self.name)
        raise AuthLockoutRisk(f"{self.name}: credentials were refused")

    async def _pages(self, route: str, key: str,
                     path: Mapping[str, object] | None = None) -> AsyncIterator[list[dict]]:
        """Yield each page's items until ``current_page >= total_pages``, an empty page,
        a page with nothing new, or the safety cap."""
        seen: set[str] = set()
        page, cap = 1, MAX_PAGES
        while True:
            body = await self._get(
                route, path, params={"page": page, "records_per_page": self._records_per_page})
            items = body.get(key) if isinstance(body, dict) else None
            if not isinstance(items, list):
                self._parser.invalid("missing_field")
                raise MalformedResponse(f"{route} answered without a {key} list",
                                        route=route, status="200")
            objects = [i for i in items if isinstance(i, dict)]
            for _ in range(len(items) - len(objects)):
                self._parser.invalid("missing_field")
            items = objects
            guids = {g for g in (parse_id(i.get("guid")) for i in items) if g is not None}
            fresh = guids - seen
            seen |= guids
            yield items
            pagination = body.get("pagination") if isinstance(body, dict) else None
            pagination = pagination if isinstance(pagination, dict) else {}
            current = _as_int(pagination.get("current_page")) or page
            total = _as_int(pagination.get("total_pages"))
            if page == 1 and total is not None:
                cap = min(MAX_PAGES, total + 2)
            if not items or not fresh or total is None or current >= total or page >= cap:
                return
            page += 1

    async def _user_guids(self) -> list[str]:
        guids: dict[str, None] = {}
        async for users in self._pages(USERS_ROUTE, "users"):
            for user in users:
                guid = parse_id(user.get("guid"))
                if guid is None:
                    self._parser.invalid("missing_field")
                elif self.config.include_disabled_users or not _is_true(user.get("is_disabled")):
                    guids.setdefault(guid, None)
        return list(guids)

    async def _user_members(self, user_guid: str) -> list[AccountStatus]:
        """Records for one user's members; a 404 means the user is gone."""
        records: list[AccountStatus] = []
        try:
            async for members in self._pages(MEMBERS_ROUTE, "members", {"user_guid": user_guid}):
                for member in members:
                    record = await self._record(member)
                    if record is not None:
                        records.append(record)
        except UpstreamStatusError as exc:
            if exc.http_status != 404:
                raise
            log.debug("%s: user %s is gone (404)", self.name, user_guid)
            return []
        return records

    async def _record(self, member: dict) -> AccountStatus | None:
        guid = parse_id(member.get("guid"))
        institution_code = parse_id(member.get("institution_code"))
        if guid is None or institution_code is None:
            self._parser.invalid("missing_field")
            return None
        code = normalise_code("mx", member.get("connection_status"))
        if code is None:
            self._parser.invalid("invalid_code")
            return None
        aggregated_at = self._parser.timestamp(member.get("aggregated_at"))
        settled = _is_false(member.get("is_being_aggregated"))
        return AccountStatus(
            source=self.name,
            provider=self.provider,
            account_key=guid,
            institution_id=institution_code,
            institution=clean_label(await self._institutions.get(institution_code),
                                    institution_code),
            code=code,
            attempt_ts=aggregated_at if settled else None,
            success_ts=self._parser.timestamp(member.get("successfully_aggregated_at")),
            owner_id=parse_id(member.get("user_guid")),
            login_id=guid,
        )

    async def _load_institution(self, code: str) -> tuple[str, float]:
        """``institution.name``, else the code (errors kept only briefly)."""
        body, fallback, ttl = await institution_body(
            lambda: self._get(INSTITUTION_ROUTE, {"institution_code": code}),
            code, self.config.institution_cache_ttl)
        institution = body.get("institution") if isinstance(body, dict) else None
        name = institution.get("name") if isinstance(institution, dict) else None
        if isinstance(name, str) and name.strip():
            return name.strip(), ttl
        return fallback, ttl
