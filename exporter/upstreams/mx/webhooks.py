"""MX's webhook bodies (``CONNECTION_STATUS``, ``AGGREGATION``, member webhooks) as a
pydantic model, read into the :class:`~exporter.sources.notices.Delivery` each asks for."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, ValidationError

from exporter.sources.notices import HOUR, Delivery, Malformed, body_key, owner, parse_json
from exporter.sources.payloads import Payload

MX_KEEP = 24 * HOUR + HOUR             # "~24 h, at most 12 retries"
MX_ACTIONABLE = {"CONNECTION_STATUS": "connection_status", "AGGREGATION": "aggregation",
                 "MEMBER": "member"}


class MxMemberRef(Payload):
    user_guid: object = None


def _member(raw: object) -> object:
    """A member object, else none (a member webhook carries an object)."""
    return raw if isinstance(raw, dict) else None


class MxNotice(Payload):
    """``{"type", "user_guid", …}`` or ``{"action", "member": {…, "user_guid"}}``; ``type``
    is kept as sent (the member webhook's is absent or exactly ``MEMBER``)."""

    type: object = None
    user_guid: object = None
    member: Annotated[MxMemberRef | None, BeforeValidator(_member)] = None

    def kind_and_owner(self) -> tuple[str, object] | None:
        """The kind of notice and the owner it names as sent; None for any other notice."""
        if self.member is not None and self.type in (None, "MEMBER"):
            return "member", self.member.user_guid
        if isinstance(self.type, str) and self.type.upper() in MX_ACTIONABLE:
            return MX_ACTIONABLE[self.type.upper()], self.user_guid
        return None


def notice(body: bytes) -> Delivery:
    """MX sends no event id, so the dedupe key is the body's hash: an identical notice within
    24 h is a redelivery (the poll still catches what it would have shown)."""
    try:
        found = MxNotice.model_validate(parse_json(body)).kind_and_owner()
    except ValidationError:
        raise Malformed("not an object") from None
    if found is None:
        return Delivery("other", ignored=True)
    kind, raw_owner = found
    return Delivery(kind, (owner(raw_owner, kind),), body_key(body), MX_KEEP)
