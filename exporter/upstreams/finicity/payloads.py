"""Every Finicity body the agent reads, as pydantic models on the shared lenient types of
:mod:`exporter.sources.payloads` (validated and counted by its ``PayloadReader``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from exporter.records import STATUS_MISSING
from exporter.sources.payloads import (
    NEVER_AGGREGATED,
    ConsentEnd,
    Count,
    Flag,
    Id,
    Items,
    Payload,
    RequiredId,
    Text,
    Timestamp,
    Url,
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


class FinicityInstitution(Payload):
    displayName: Text = None
    name: Text = None


class FinicityInstitutionBody(Payload):
    institution: FinicityInstitution


class FinicityFixLink(Payload):
    link: Url
