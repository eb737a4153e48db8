"""Mastercard Open Finance US (the Finicity API): one sweep = customers walk + accounts per customer.

Read-only: the only POSTs are the partner authentication and, on request, a Connect Fix link. One token per source, renewed after
``token_renew_after`` behind a single lock; a refused login stops the source for good, since
five failed logins lock the partner out.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.config import FinicitySourceConfig
from exporter.records import STATUS_MISSING, AccountStatus
from exporter.sources.base import (
    AuthLockoutRisk,
    SweepFailed,
    SweepReport,
    SweepSink,
    UpstreamObserver,
)
from exporter.sources.errors import UpstreamError, UpstreamStatusError
from exporter.sources.institution import Institution
from exporter.sources.payloads import NEVER_AGGREGATED
from exporter.sources.sweep import institution_name, sweep_units
from exporter.sources.upstream import UpstreamSource
from exporter.status_codes import Catalog
from exporter.upstreams.finicity.payloads import (
    FinicityAccount,
    FinicityAccountsPage,
    FinicityCustomer,
    FinicityCustomersPage,
    FinicityFixLink,
    FinicityInstitutionBody,
    FinicityToken,
)

log = logging.getLogger(__name__)

AUTH_ROUTE = "/aggregation/v2/partners/authentication"
CUSTOMERS_ROUTE = "/aggregation/v1/customers"
ACCOUNTS_ROUTE = "/aggregation/v1/customers/{customerId}/accounts"
SIMPLE_ACCOUNTS_ROUTE = "/aggregation/v1/customers/{customerId}/accounts/simple"
INSTITUTION_ROUTE = "/institution/v2/institutions/{institutionId}"
FIX_ROUTE = "/connect/v2/generate/fix"

API_VERSION = "v1"
"""What ``openfinance_upstream_api_info`` says: the Finicity API has no version header; its
paths carry the version (``/aggregation/v1``, spec 1.42.0)."""
RENEWABLE_TOKEN_CODES = frozenset({10022, 10023})  # invalid / expired Finicity-App-Token
MAX_CUSTOMER_PAGES = 10_000  # safety net when the server reports no ``found``


class StartMeaning(enum.Enum):
    """How the server reads ``start`` on ``GET /customers``: the spec has said both."""

    RECORD_INDEX = "record_index"
    PAGE_NUMBER = "page_number"


class PartnerToken:
    """The partner's ``Finicity-App-Token``: one per source, renewed early, single flight.

    A 401 on the authentication call stops the source: retrying wrong credentials five times
    would lock the partner out.
    """

    def __init__(self, source: FinicitySource, partner_id: str, partner_secret: str):
        self._source = source
        self._body = {"partnerId": partner_id, "partnerSecret": partner_secret}
        self._value: str | None = None
        self._issued = -math.inf
        self._lock = asyncio.Lock()
        self.stopped = False

    def _fresh(self) -> bool:
        age = self._source.clock() - self._issued
        return self._value is not None and age < self._source.config.token_renew_after

    def check_stopped(self) -> None:
        if self.stopped:
            raise AuthLockoutRisk(
                f"{self._source.name}: authentication was refused; fix the credentials and restart"
            )

    async def get(self) -> str:
        self.check_stopped()
        if self._fresh():
            return self._value  # type: ignore[return-value]
        async with self._lock:
            self.check_stopped()
            if self._fresh():
                return self._value  # type: ignore[return-value]
            return await self._create()

    async def renew(self, rejected: str) -> str:
        """A new token after ``rejected`` was refused, unless another task already renewed it."""
        async with self._lock:
            self.check_stopped()
            if self._value is not None and self._value != rejected:
                return self._value
            return await self._create()

    async def _create(self) -> str:
        source = self._source
        try:
            body = await source.http.request_json("POST", AUTH_ROUTE, json=self._body)
        except UpstreamStatusError as exc:
            if exc.http_status == 401:
                self.stopped = True
                self._value = None
                source.observer.auth_failure(source.name)
                log.error("%s: partner authentication refused (HTTP 401, code %s); source stopped "
                          "to avoid a partner lockout", source.name, exc.code)
                raise AuthLockoutRisk(f"{source.name}: partner authentication refused") from None
            raise SweepFailed(f"{source.name}: partner authentication failed: {exc}") from None
        except UpstreamError as exc:
            raise SweepFailed(f"{source.name}: partner authentication failed: {exc}") from None
        try:
            token = source.payloads.body(FinicityToken, body, AUTH_ROUTE).token
        except UpstreamError:
            raise SweepFailed(f"{source.name}: authentication answer carries no token") from None
        self._value, self._issued = token, source.clock()
        log.debug("%s: new partner token", source.name)
        return token


@dataclass(slots=True)
class CustomerWalk:
    """The state of one walk over ``GET /customers``; decides where to go next and when to stop.

    Starts with ``start`` as a 1-based record index (or the meaning learnt on an earlier
    sweep). A page that is empty while more was announced, that brings only repeats, that
    overlaps in page-number mode, or an end short of ``found`` means the server reads
    ``start`` the other way: switch once, and stop at the next anomaly.
    """

    meaning: StartMeaning
    ids: dict[str, None] = field(default_factory=dict)
    walk_seen: set[str] = field(default_factory=set)
    first_page: list[str] = field(default_factory=list)
    found: int | None = None
    page_number: int = 2
    next_index: int = 1
    requests: int = 0
    without_id: int = 0
    switched: bool = False
    confirmed_switch: bool = False
    truncated: bool = False

    def start(self) -> int:
        if self.requests == 0:
            return 1
        return self.page_number if self.meaning is StartMeaning.PAGE_NUMBER else self.next_index

    def cap(self, limit: int) -> int:
        if self.found is None:
            return MAX_CUSTOMER_PAGES
        return 2 * (math.ceil(self.found / limit) + 2)

    def accept(self, page_ids: list[str], more: bool, found: int | None, limit: int,
               without_id: int = 0) -> bool:
        """Record one page; True when the walk should fetch another page.

        ``without_id`` counts records on the page that had no usable id (they still count
        towards ``found``).
        """
        self.requests += 1
        self.without_id += without_id
        if found is not None:
            self.found = found
        for unit_id in page_ids:
            self.ids.setdefault(unit_id, None)
        if self.requests == 1:
            self.first_page = page_ids
            self.walk_seen = set(page_ids)
            self.next_index = 1 + len(page_ids)
            return more and bool(page_ids) and not self._found_all() and self._under_cap(limit)
        new = [i for i in page_ids if i not in self.walk_seen]
        self.walk_seen.update(page_ids)
        overlap = self.meaning is StartMeaning.PAGE_NUMBER and len(new) < len(page_ids)
        short = self._short()
        anomaly = not page_ids or not new or overlap or (not more and short)
        if self.switched and not self.confirmed_switch and new and not overlap:
            self.confirmed_switch = True
        if anomaly and not self.switched:
            self._switch()
            return not self._found_all() and self._under_cap(limit)
        if anomaly or not more or self._found_all():
            return False
        self.page_number += 1
        self.next_index += len(page_ids)
        return self._under_cap(limit)

    def _switch(self) -> None:
        self.switched = True
        self.meaning = (StartMeaning.PAGE_NUMBER if self.meaning is StartMeaning.RECORD_INDEX
                        else StartMeaning.RECORD_INDEX)
        self.walk_seen = set(self.first_page)
        self.page_number = 2
        self.next_index = 1 + len(self.first_page)

    def _short(self) -> bool:
        return self.found is not None and len(self.ids) + self.without_id < self.found

    def _found_all(self) -> bool:
        return self.found is not None and not self._short()

    def _under_cap(self, limit: int) -> bool:
        if self.requests < self.cap(limit):
            return True
        self.truncated = True
        return False

    @property
    def complete(self) -> bool:
        return not self.truncated and not self._short()


class FinicitySource(UpstreamSource):
    """Polls every account of one Finicity partner, read-only."""

    provider = "finicity"
    status_field = "aggregationStatusCode"

    def __init__(self, config: FinicitySourceConfig, observer: UpstreamObserver | None = None,
                 *, catalog: Catalog | None = None, **options: Any):
        """``options``: the clocks, sleep, random, transport and missing share of
        :class:`~exporter.sources.upstream.UpstreamSource`."""
        self._catalog = catalog or Catalog.default()
        super().__init__(config, observer, **options)
        self._token = PartnerToken(self, config.partner_id, config.partner_secret.get_secret_value())
        self._start_meaning = StartMeaning.RECORD_INDEX
        self._accounts_route = SIMPLE_ACCOUNTS_ROUTE if config.simple_accounts else ACCOUNTS_ROUTE

    def api_version(self) -> str:
        return API_VERSION

    def headers(self) -> dict[str, str]:
        return {"Finicity-App-Key": self.config.app_key.get_secret_value(),
                "Accept": "application/json"}

    def is_outcome_code(self, code: int) -> bool:
        """Finicity sends aggregation outcomes (catalogued codes) as HTTP 500: final."""
        return self._catalog.get("finicity", str(code)) is not None

    @property
    def stopped(self) -> bool:
        return self._token.stopped

    async def sweep(self, sink: SweepSink) -> SweepReport:
        """Walk the customers, then read each one's accounts; a failed customer makes it partial."""
        self._token.check_stopped()
        with self.drift.sweep():
            return await sweep_units(
                self.name, sink, self._customer_ids, self._customer_accounts,
                shard=self.config.shard, concurrency=self.config.http.max_concurrency,
                units="customers")

    # ------------------------------------------------------------------ one owner

    async def refresh_owner(self, owner_id: str) -> list[AccountStatus]:
        """Re-read one customer's accounts; ``[]`` when the customer is gone (404)."""
        self._token.check_stopped()
        return await self._customer_accounts(owner_id)

    async def fix_link(self, owner_id: str, login_id: str) -> str:
        """A Connect Fix link for one institution login (``POST /connect/v2/generate/fix``)."""
        body: dict[str, object] = {"partnerId": self.config.partner_id, "customerId": owner_id,
                                   "institutionLoginId": login_id}
        if self.config.fix_redirect_uri is not None:
            body["redirectUri"] = self.config.fix_redirect_uri
        if self.config.fix_webhook is not None:
            body["webhook"] = self.config.fix_webhook
        answer = await self._call("POST", FIX_ROUTE, json=body)
        return self.payloads.body(FinicityFixLink, answer, FIX_ROUTE).link

    # ------------------------------------------------------------------ requests

    async def _call(self, method: str, route: str, path: Mapping[str, object] | None = None,
                    params: Mapping[str, object] | None = None, json: object = None) -> Any:
        """A request with the partner token; on an invalid/expired token, renew once and
        retry once."""
        token = await self._token.get()
        try:
            return await self.http.request_json(method, route, path, params=params, json=json,
                                                headers={"Finicity-App-Token": token})
        except UpstreamStatusError as exc:
            if exc.http_status != 401 or exc.code not in RENEWABLE_TOKEN_CODES | {None}:
                raise
        self.observer.retry(self.name, "token_expired")
        token = await self._token.renew(token)
        return await self.http.request_json(method, route, path, params=params, json=json,
                                            headers={"Finicity-App-Token": token})

    async def _customer_ids(self) -> tuple[list[str], bool]:
        """Every customer id, walking ``start``/``limit`` to the end and no further."""
        limit = self.config.page_size
        walk = CustomerWalk(self._start_meaning)
        params: dict[str, object] = {"limit": limit}
        if self.config.customer_type != "all":
            params["type"] = self.config.customer_type
        while True:
            body = await self._call("GET", CUSTOMERS_ROUTE, params={**params, "start": walk.start()})
            page = self.payloads.body(FinicityCustomersPage, body, CUSTOMERS_ROUTE)
            ids = [c.id for c in self.payloads.items(FinicityCustomer, page.customers)]
            if not walk.accept(ids, page.moreAvailable is True, page.found, limit,
                               len(page.customers) - len(ids)):
                break
        if walk.switched and walk.confirmed_switch:
            log.info("%s: the server reads start as a %s", self.name, walk.meaning.value)
            self._start_meaning = walk.meaning
        return list(walk.ids), walk.complete

    async def _customer_accounts(self, customer_id: str) -> list[AccountStatus]:
        """Records for one customer's accounts; a 404 means it has none (any more)."""
        try:
            body = await self._call("GET", self._accounts_route, {"customerId": customer_id})
        except UpstreamStatusError as exc:
            if exc.http_status == 404:
                log.debug("%s: a customer has no accounts (404)", self.name)
                return []
            raise
        page = self.payloads.body(FinicityAccountsPage, body, self._accounts_route)
        records = []
        for account in self.payloads.items(FinicityAccount, page.accounts):
            name = self._institutions.fresh(account.institutionId)
            if name is None:
                name = await self._institutions.get(account.institutionId)
            records.append(self._record(account, customer_id, name))
        return self.drift.records(records)

    def _record(self, account: FinicityAccount, customer_id: str, institution: str) -> AccountStatus:
        return AccountStatus(
            source=self.name,
            provider=self.provider,
            account_key=account.id,
            institution_id=account.institutionId,
            institution=institution,
            code=(NEVER_AGGREGATED if account.aggregationStatusCode == STATUS_MISSING
                  and account.aggregationAttemptDate is None else account.aggregationStatusCode),
            attempt_ts=account.aggregationAttemptDate,
            success_ts=account.aggregationSuccessDate,
            owner_id=account.customerId or customer_id,
            login_id=account.institutionLoginId,
            consent_end=account.consent_end,
        )

    async def _load_institution(self, institution_id: str) -> tuple[str, float]:
        """``displayName ?? name ?? id``; an id that is not an integer (the spec's type of
        the path parameter) has no institution to look up."""
        if not institution_id.isdigit():
            return institution_id, self.config.institution_cache_ttl

        def parse(body: Any) -> Institution:
            return self.payloads.body(FinicityInstitutionBody, body,
                                      INSTITUTION_ROUTE).institution.typed()

        return await institution_name(
            lambda: self._call("GET", INSTITUTION_ROUTE, {"institutionId": institution_id}),
            parse, institution_id, self.config.institution_cache_ttl,
            seen=self.seen_hook(institution_id))

    async def institution(self, institution_id: str) -> Institution | None:
        """The institution record; one that is no record counts ``malformed_institution``
        and reads as an institution that declares nothing."""
        if not institution_id.isdigit():
            return None
        try:
            body = await self._call("GET", INSTITUTION_ROUTE, {"institutionId": institution_id})
        except UpstreamStatusError as exc:
            if exc.http_status == 404:
                return None
            raise
        if body is None:
            return Institution()
        found = self.payloads.record(FinicityInstitutionBody, body, "malformed_institution")
        return Institution() if found is None else found.institution.typed()
