"""Finicity's webhook bodies: Data Connect events and TxPush account events, as pydantic
models, each read into the :class:`~exporter.sources.notices.Delivery` it asks for."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated

from pydantic import BeforeValidator, Field, StrictStr, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from exporter.sources.notices import (
    HOUR,
    Delivery,
    Malformed,
    Owner,
    body_key,
    owner,
    parse_json,
)
from exporter.sources.payloads import Payload

# Dedupe keys are kept for the sender's retry window plus a margin.
FINICITY_KEEP = 3 * 24 * HOUR + HOUR   # "5 times in 5 minutes, then once a day for 3 days"
TXPUSH_KEEP = 6 * HOUR + HOUR          # "resent periodically for up to 6 hours"

# Finicity Data Connect events that may follow a change of a login's status: re-read the customer.
FINICITY_ACTIONABLE = frozenset({
    "added", "credentialsUpdated", "invalidCredentials", "mfa", "unableToConnect",
    "accountsDeleted", "done"})
# Known events that say nothing about a status (search phase, session progress).
FINICITY_PASSIVE = frozenset({
    "started", "institutionSupported", "institutionNotFound", "institutionNotSupported",
    "discovered", "adding", "processing"})
TXPUSH_KINDS = frozenset({"txpush_account", "txpush_transaction", "txpush_verification"})
MAX_OWNERS = 100


def _event_id(raw: object) -> str | None:
    if raw is None or (isinstance(raw, str) and 0 < len(raw) <= 200):
        return raw
    raise PydanticCustomError("event_id", "eventId is not a string")


class ConnectEnvelope(Payload):
    """``{eventType, …}``: every Data Connect body names its event (``ping`` only that)."""

    eventType: StrictStr


class ConnectEvent(Payload):
    """``{customerId, eventType, eventId, payload}`` of an event that names its customer."""

    eventId: Annotated[str | None, BeforeValidator(_event_id)] = None
    customerId: Owner


class TxPushEvent(Payload):
    class_: object = Field(None, alias="class")
    records: object = None


class TxPushBody(Payload):
    """``{"event": {"class": "account"|"transaction", "type", "records": [...]}}``."""

    event: TxPushEvent


class TxPushRecord(Payload):
    """One account record; the values are kept as sent (the dedupe key is made of them)."""

    id: object = None
    customerId: object = None
    aggregationAttemptDate: object = None
    aggregationStatusCode: object = None


_RECORDS: TypeAdapter[list[TxPushRecord]] = TypeAdapter(
    Annotated[list[TxPushRecord], Field(min_length=1)])


def connect(body: bytes) -> Delivery:
    """A Data Connect event ``{customerId, eventType, eventId, payload}`` (``ping`` has only
    ``eventType`` and ``payload``)."""
    doc = parse_json(body)
    try:
        event = ConnectEnvelope.model_validate(doc).eventType
    except ValidationError:
        raise Malformed("no eventType") from None
    if event == "ping":
        return Delivery("ping")
    if event not in FINICITY_ACTIONABLE:
        return Delivery(event if event in FINICITY_PASSIVE else "other", ignored=True)
    try:
        found = ConnectEvent.model_validate(doc)
    except ValidationError as exc:
        raise Malformed(exc.errors(include_url=False)[0]["msg"], event) from None
    key = f"e:{found.eventId}" if found.eventId else body_key(body)
    return Delivery(event, (found.customerId,), key, FINICITY_KEEP)


def txpush(body: bytes) -> Delivery:
    """Account events name their customer in each record; transaction events are ignored.
    No event id: the key is the records' (id, aggregationAttemptDate, aggregationStatusCode)."""
    try:
        event = TxPushBody.model_validate(parse_json(body)).event
    except ValidationError:
        raise Malformed("no event") from None
    if event.class_ == "transaction":
        return Delivery("txpush_transaction", ignored=True)
    if event.class_ != "account":
        return Delivery("other", ignored=True)
    try:
        records = _RECORDS.validate_python(event.records)
    except ValidationError:
        raise Malformed("no account records", "txpush_account") from None
    owners = tuple(dict.fromkeys(owner(r.customerId, "txpush_account")
                                 for r in records[:MAX_OWNERS]))
    facts = sorted(json.dumps([str(r.id), str(r.aggregationAttemptDate),
                               str(r.aggregationStatusCode)]) for r in records)
    key = "t:" + hashlib.sha256("\n".join(facts).encode()).hexdigest()
    return Delivery("txpush_account", owners, key, TXPUSH_KEEP)
