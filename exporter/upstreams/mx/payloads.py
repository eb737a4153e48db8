"""Every MX body the agent reads, as pydantic models on the shared lenient types of
:mod:`exporter.sources.payloads` (validated and counted by its ``PayloadReader``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from exporter.records import STATUS_MISSING
from exporter.sources.institution import Institution
from exporter.sources.payloads import (
    NEVER_AGGREGATED,
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
    object_or_empty,
    read_flag,
)


def _mx_code(raw: object) -> str:
    if raw is None:
        return NEVER_AGGREGATED
    if isinstance(raw, str):
        text = raw.strip().upper()
        if text and text.isprintable() and len(text) <= 64:
            return text
    raise PydanticCustomError("invalid_code", "not an MX connection status")


MxCode = Annotated[str, BeforeValidator(_mx_code)]


class MxPagination(Payload):
    current_page: Count = None
    total_pages: Count = None


Pagination = Annotated[MxPagination, BeforeValidator(object_or_empty)]


class MxUser(Payload):
    guid: RequiredId
    is_disabled: Flag = None


class MxPage(Payload):
    """A page of any MX list; ``items`` is the list under the subclass's key."""

    items: Items
    pagination: Pagination = MxPagination()


class MxUsersPage(MxPage):
    items: Items = Field(alias="users")


class MxMembersPage(MxPage):
    items: Items = Field(alias="members")


class MxMember(Payload):
    guid: RequiredId
    institution_code: RequiredId
    user_guid: Id = None
    connection_status: MxCode = STATUS_MISSING
    """null for manual members (``NONE``); absent is drift (a slimmer default answer)"""
    aggregated_at: Timestamp = None
    successfully_aggregated_at: Timestamp = None
    is_being_aggregated: Flag = None


V1_PRODUCT_FLAGS = {
    "supports_account_verification": "account_verification",
    "supports_account_identification": "identity_verification",
    "supports_transaction_history": "transaction_history",
    "supports_account_statement": "statements",
}
"""v20111101's ``supports_*`` flags and the v20250224 ``supported_products`` they became."""


def _products(raw: object) -> tuple[str, ...] | None:
    """v20250224 ``supported_products``: the valid product names, in order, once each."""
    if not isinstance(raw, list):
        return None
    return tuple(dict.fromkeys(p for p in raw if isinstance(p, str) and p.isidentifier()))


class MxInstitution(Payload):
    """``GET /institutions/{institution_code}`` in either version: v20250224 lists
    ``supported_products``; v20111101 has one ``supports_*`` flag per product."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Text = None
    guid: Id = None
    is_hidden: Flag = None
    supports_oauth: Flag = None
    supported_products: Annotated[tuple[str, ...] | None, BeforeValidator(_products)] = None
    url: PlainText = None
    """the institution's home page (MX declares no status)"""

    @property
    def products(self) -> tuple[str, ...]:
        """The products the institution supports, in v20250224's names, whichever version
        answered."""
        if self.supported_products is not None:
            return self.supported_products
        extra = self.model_extra or {}
        return tuple(product for flag, product in V1_PRODUCT_FLAGS.items()
                     if read_flag(extra.get(flag)) is True)

    def typed(self) -> Institution:
        return Institution(self.name, self.url)


class MxInstitutionBody(Payload):
    institution: MxInstitution


class MxWidgetUrl(Payload):
    url: Url


class MxWidgetUrlBody(Payload):
    widget_url: MxWidgetUrl
