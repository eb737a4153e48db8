"""MX Platform API: one sweep = users walk + members per user; the member is the unit.

Speaks v20250224 by default (``Accept: application/json`` + ``Accept-Version: v20250224``;
since 2026-08-12 MX refuses any call without ``Accept-Version``), or v20111101 when the
source's ``api_version`` asks for it (``Accept-Version: v20111101`` with its
``application/vnd.mx.api.v1+json`` media type). HTTP Basic with ``client_id:api_key``, no
token. Read-only: never asks for an aggregation; the only POST mints a Connect widget URL on
request. Institution names come from ``GET /institutions/{institution_code}``, never from
``member.name``, which users can set to personal text.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from exporter.config import MxSourceConfig
from exporter.records import AccountStatus
from exporter.sources.base import (
    AuthLockoutRisk,
    SweepReport,
    SweepSink,
    UpstreamObserver,
)
from exporter.sources.errors import UpstreamStatusError
from exporter.sources.payloads import Payload
from exporter.sources.sweep import institution_name, sweep_units
from exporter.sources.upstream import UpstreamSource
from exporter.upstreams.mx.payloads import (
    MxInstitutionBody,
    MxMember,
    MxMembersPage,
    MxPage,
    MxUser,
    MxUsersPage,
    MxWidgetUrlBody,
)

log = logging.getLogger(__name__)

USERS_ROUTE = "/users"
INSTITUTION_ROUTE = "/institutions/{institution_code}"
WIDGET_URLS_ROUTE = "/users/{user_guid}/widget_urls"  # {user_guid} in both versions' specs
ACCEPT_V1 = "application/vnd.mx.api.v1+json"
V20250224, V20111101 = "v20250224", "v20111101"


@dataclass(frozen=True, slots=True)
class MxApiVersion:
    """What differs between the versions the agent speaks: headers, the member route's
    parameter name, and how a widget URL asks for data."""

    name: str
    accept: str
    members_route: str
    owner_param: str

    def headers(self) -> dict[str, str]:
        return {"Accept": self.accept, "Accept-Version": self.name}

    def widget_request(self, member_guid: str, products: Sequence[str]) -> dict[str, object]:
        """The repair widget, opened on the broken member, institution search off:
        v20250224 orders data with ``data_request.products``, v20111101 with ``mode``."""
        request: dict[str, object] = {"widget_type": "connect_widget",
                                      "current_member_guid": member_guid,
                                      "disable_institution_search": True}
        if self.name == V20111101:
            request["mode"] = "aggregation"
        else:
            request["data_request"] = {"products": list(products)}
        return {"widget_url": request}


API_VERSIONS = {
    V20250224: MxApiVersion(V20250224, "application/json",
                            "/users/{user_identifier}/members", "user_identifier"),
    V20111101: MxApiVersion(V20111101, ACCEPT_V1, "/users/{user_guid}/members", "user_guid"),
}
"""The versions the agent speaks, newest first (the config's ``api_version`` takes these)."""
MAX_PAGES = 10_000  # safety net per list, whatever total_pages says

P = TypeVar("P", bound=Payload)


def basic_auth(user: str, password: str) -> str:
    """The ``Authorization`` value of HTTP Basic, built once per source."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class MxSource(UpstreamSource):
    """Polls every member of one MX client, read-only."""

    provider = "mx"
    status_field = "connection_status"

    def __init__(self, config: MxSourceConfig, observer: UpstreamObserver | None = None,
                 **options: Any):
        """``options``: the clocks, sleep, random, transport and missing share of
        :class:`~exporter.sources.upstream.UpstreamSource`."""
        self.version = API_VERSIONS[config.api_version]
        super().__init__(config, observer, **options)
        self._records_per_page = min(max(config.page_size, 10), 1000)
        self.stopped = False

    def api_version(self) -> str:
        return self.version.name

    def headers(self) -> dict[str, str]:
        return {**self.version.headers(), "Authorization": basic_auth(
            self.config.client_id, self.config.api_key.get_secret_value())}

    async def sweep(self, sink: SweepSink) -> SweepReport:
        """Walk the users, then each one's members; a failed user makes the sweep partial."""
        self._check_stopped()
        with self.drift.sweep():
            return await sweep_units(
                self.name, sink, self._user_listing, self._user_members,
                shard=self.config.shard, concurrency=self.config.http.max_concurrency,
                units="users")

    async def _user_listing(self) -> tuple[list[str], bool]:
        return await self._user_guids(), True

    # ------------------------------------------------------------------ one owner

    async def refresh_owner(self, owner_id: str) -> list[AccountStatus]:
        """Re-read one user's members; ``[]`` when the user is gone (404)."""
        return await self._user_members(owner_id)

    async def fix_link(self, owner_id: str, login_id: str) -> str:
        """A Connect widget URL opened on the broken member (valid ten minutes, single use)."""
        body = self.version.widget_request(login_id, self.config.widget_products)
        answer = await self._call("POST", WIDGET_URLS_ROUTE, {"user_guid": owner_id}, json=body)
        return self.payloads.body(MxWidgetUrlBody, answer, WIDGET_URLS_ROUTE).widget_url.url

    # ------------------------------------------------------------------ requests

    def _check_stopped(self) -> None:
        if self.stopped:
            raise AuthLockoutRisk(f"{self.name}: credentials were refused; fix them and restart")

    async def _call(self, method: str, route: str, path: Mapping[str, object] | None = None,
                    params: Mapping[str, object] | None = None, json: object = None) -> Any:
        """A request; a 401 means the client id / API key are wrong: stop the source."""
        self._check_stopped()
        try:
            return await self.http.request_json(method, route, path, params=params, json=json)
        except UpstreamStatusError as exc:
            if exc.http_status != 401:
                raise
        if not self.stopped:
            self.stopped = True
            self.observer.auth_failure(self.name)
            log.error("%s: MX refused the client id / API key (HTTP 401); source stopped", self.name)
        raise AuthLockoutRisk(f"{self.name}: credentials were refused")

    async def _pages(self, route: str, page_model: type[MxPage],
                     item_model: type[P], path: Mapping[str, object] | None = None,
                     ) -> AsyncIterator[list[P]]:
        """Yield each page's usable items until ``current_page >= total_pages``, an empty
        page, a page with nothing new, or the safety cap."""
        seen: set[str] = set()
        page, cap = 1, MAX_PAGES
        while True:
            body = await self._call(
                "GET", route, path,
                params={"page": page, "records_per_page": self._records_per_page})
            parsed = self.payloads.body(page_model, body, route)
            raw_items = parsed.items
            items = self.payloads.items(item_model, raw_items)
            guids = {i.guid for i in items}  # type: ignore[attr-defined]
            fresh = guids - seen
            seen |= guids
            yield items
            current = parsed.pagination.current_page or page
            total = parsed.pagination.total_pages
            if page == 1 and total is not None:
                cap = min(MAX_PAGES, total + 2)
            if not raw_items or not fresh or total is None or current >= total or page >= cap:
                return
            page += 1

    async def _user_guids(self) -> list[str]:
        guids: dict[str, None] = {}
        async for users in self._pages(USERS_ROUTE, MxUsersPage, MxUser):
            for user in users:
                if self.config.include_disabled_users or user.is_disabled is not True:
                    guids.setdefault(user.guid, None)
        return list(guids)

    async def _user_members(self, user_guid: str) -> list[AccountStatus]:
        """Records for one user's members; a 404 means the user is gone."""
        records: list[AccountStatus] = []
        try:
            version = self.version
            async for members in self._pages(version.members_route, MxMembersPage, MxMember,
                                             {version.owner_param: user_guid}):
                for member in members:
                    name = self._institutions.fresh(member.institution_code)
                    if name is None:
                        name = await self._institutions.get(member.institution_code)
                    records.append(self._record(member, user_guid, name))
        except UpstreamStatusError as exc:
            if exc.http_status != 404:
                raise
            log.debug("%s: a user is gone (404)", self.name)
            return []
        return self.drift.records(records)

    def _record(self, member: MxMember, user_guid: str, institution: str) -> AccountStatus:
        return AccountStatus(
            source=self.name,
            provider=self.provider,
            account_key=member.guid,
            institution_id=member.institution_code,
            institution=institution,
            code=member.connection_status,
            attempt_ts=member.aggregated_at if member.is_being_aggregated is False else None,
            success_ts=member.successfully_aggregated_at,
            owner_id=member.user_guid or user_guid,
            login_id=member.guid,
        )

    async def _load_institution(self, code: str) -> tuple[str, float]:
        """``institution.name``, else the code."""
        return await institution_name(
            lambda: self._call("GET", INSTITUTION_ROUTE, {"institution_code": code}),
            lambda body: self.payloads.body(MxInstitutionBody, body,
                                            INSTITUTION_ROUTE).institution.typed(),
            code, self.config.institution_cache_ttl,
            seen=self.seen_hook(code))
