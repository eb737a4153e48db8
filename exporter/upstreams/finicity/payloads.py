"""Every Finicity body the agent reads, as pydantic models on the shared lenient types of
:mod:`exporter.sources.payloads` (validated and counted by its ``PayloadReader``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from exporter.records import STATUS_MISSING
from exporter.sources.institution import INSTITUTION, OVERALL, DeclaredStatus, Institution
from exporter.sources.payloads import (
    NEVER_AGGREGATED,
    ConsentEnd,
    Count,
    Flag,
    Id,
    Items,
    Payload,
    PlainText,
    RequiredId,
    Text,
    Timestamp,
    Url,
    note,
    read_integer,
)


def _finicity_code(raw: object) -> str:
    if raw is None:
        return NEVER_AGGREGATED
    code = read_integer(raw)
    if code is None:
        raise PydanticCustomError("invalid_code", "not a Finicity code")
    return str(code)


FinicityCode = Annotated[str, BeforeValidator(_finicity_code)]


class FinicityToken(Payload):
    token: RequiredId


class FinicityCustomer(Payload):
    id: RequiredId


class FinicityCustomersPage(Payload):
    customers: Items
    moreAvailable: Flag = None
    found: Count = None


class FinicityAccount(Payload):
    id: RequiredId
    institutionId: RequiredId
    customerId: Id = None
    institutionLoginId: Id = None
    aggregationStatusCode: FinicityCode = STATUS_MISSING
    """absent: never aggregated when there is no attempt date either, else drift"""
    aggregationAttemptDate: Timestamp = None
    aggregationSuccessDate: Timestamp = None
    authorizationExpires: Flag = None
    """whether the consent has an end (the spec's default: false)"""
    authorizationEndDate: ConsentEnd = None

    @property
    def consent_end(self) -> float | None:
        """The end of the user's consent, only when ``authorizationExpires`` is true (the
        end date means nothing otherwise)."""
        return self.authorizationEndDate if self.authorizationExpires else None


class FinicityAccountsPage(Payload):
    accounts: Items


# --------------------------------------------------------------------------- institutions

PRODUCTS = ("transAgg", "stateAgg", "voa", "voi", "ach", "aha")
"""The products of ``productionStatus`` (beta), each with its own status."""
KNOWN_STATUSES = frozenset({
    "online", "offline", "maintenance", "testing", "beta", "validated", "migrating",
    "investigating",
})
"""``status`` (online, offline, maintenance, testing, beta, validated, migrating) and the
product statuses (online, offline, maintenance, investigating), as documented."""
OTHER_STATUS = "other"
"""Label value of a status outside the documented set (counted, so the label stays bounded)."""


def _declared(raw: object, info: ValidationInfo) -> str | None:
    """A declared status in lower case: ``invalid_declared_status`` when it is no string
    (ignored), ``unknown_declared_status`` when it is outside the documented set (kept as
    ``other``)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        note(info, "invalid_declared_status")
        return None
    # "testing (Limited Availability)" is how the spec describes one value; keep the word.
    value = raw.strip().lower().split(" ", 1)[0]
    if value not in KNOWN_STATUSES:
        note(info, "unknown_declared_status")
        return OTHER_STATUS
    return value


def _production(raw: object, info: ValidationInfo) -> object:
    """``productionStatus``: an object, else ignored (``invalid_declared_status``)."""
    if raw is None or isinstance(raw, dict):
        return raw
    note(info, "invalid_declared_status")
    return None


Declared = Annotated[str | None, BeforeValidator(_declared)]


class FinicityProductionStatus(Payload):
    overallStatus: Declared = None
    transAgg: Declared = None
    stateAgg: Declared = None
    voa: Declared = None
    voi: Declared = None
    ach: Declared = None
    aha: Declared = None


class FinicityInstitution(Payload):
    """``GET /institution/v2/institutions/{id}``'s record: its names, home page and the
    statuses it declares; a bad declared value never hides the good ones."""

    displayName: Text = None
    name: Text = None
    urlHomeApp: PlainText = None
    status: Declared = None
    productionStatus: Annotated[FinicityProductionStatus | None,
                                BeforeValidator(_production)] = None

    def declared(self) -> DeclaredStatus | None:
        """(product, status) pairs: ``institution`` (``status``), ``overall``
        (``productionStatus.overallStatus``), then each product's; None when none is set."""
        pairs: list[tuple[str, str]] = []
        if self.status:
            pairs.append((INSTITUTION, self.status))
        production = self.productionStatus
        if production is not None:
            for field, product in (("overallStatus", OVERALL), *((p, p) for p in PRODUCTS)):
                value = getattr(production, field)
                if value:
                    pairs.append((product, value))
        return DeclaredStatus(tuple(pairs)) if pairs else None

    def typed(self) -> Institution:
        return Institution(self.displayName or self.name, self.urlHomeApp, self.declared())


class FinicityInstitutionBody(Payload):
    institution: FinicityInstitution


class FinicityFixLink(Payload):
    link: Url
