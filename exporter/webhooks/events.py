"""What a verified delivery asks for: its ``kind`` label, the owners to re-read, its dedupe key.

Pure functions over the raw body; no I/O. A payload is a hint, never state: only the owner
(Finicity customerId, MX user_guid) is taken from it, everything else comes from the re-read.
Shapes and uncertainties: reference/upstream-apis.md, Part E.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

HOUR = 3600.0
# Dedupe keys are kept for the sender's retry window plus a margin.
FINICITY_KEEP = 3 * 24 * HOUR + HOUR   # "5 times in 5 minutes, then once a day for 3 days"
MX_KEEP = 24 * HOUR + HOUR             # "~24 h, at most 12 retries"
TXPUSH_KEEP = 6 * HOUR + HOUR          # "resent periodically for up to 6 hours"

# Finicity Data Connect events that may follow a change of a login's status: re-read the customer.
FINICITY_ACTIONABLE = frozenset({
    "added", "credentialsUpdated", "invalidCredentials", "mfa", "unableToConnect",
    "accountsDeleted", "done"})
# Known events that say nothing about a status (search phase, session progress).
FINICITY_PASSIVE = frozenset({
    "started", "institutionSupported", "institutionNotFound", "institutionNotSupported",
    "discovered", "adding", "processing"})
MX_ACTIONABLE = {"CONNECTION_STATUS": "connection_status", "AGGREGATION": "aggregation",
                 "MEMBER": "member"}

KINDS = frozenset({
    "ping", *FINICITY_ACTIONABLE, *FINICITY_PASSIVE, *MX_ACTIONABLE.values(),
    "txpush_account", "txpush_transaction", "txpush_verification", "other", "unknown"})
"""Every value of the ``kind`` label: ``unknown`` before the body could be read or trusted,
``other`` for an event type this agent does not know (answered 2xx, counted ``ignored``)."""

_OWNER = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_MAX_OWNERS = 100


class Malformed(ValueError):
    """The body is not JSON, or not the shape this kind of delivery must have."""

    def __init__(self, reason: str, kind: str = "unknown"):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Delivery:
    """``owners`` to re-read (empty: nothing to do); ``ignored`` when the event says nothing
    about a status; ``dedupe_key`` kept ``keep_for`` seconds."""

    kind: str
    owners: tuple[str, ...] = ()
    dedupe_key: str | None = None
    keep_for: float = 0.0
    ignored: bool = False


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: deep-nesting bombs
        raise Malformed("not JSON") from exc


def _owner(value: Any, kind: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Malformed("owner id missing or not a string", kind)
    text = str(value)
    if not _OWNER.match(text):
        raise Malformed("owner id is not a plain id", kind)
    return text


def _body_key(body: bytes) -> str:
    return "b:" + hashlib.sha256(body).hexdigest()


def finicity_connect(body: bytes) -> Delivery:
    """A Data Connect event ``{customerId, eventType, eventId, payload}`` (``ping`` has only
    ``eventType`` and ``payload``)."""
    doc = parse_json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("eventType"), str):
        raise Malformed("no eventType")
    event = doc["eventType"]
    if event == "ping":
        return Delivery("ping")
    if event not in FINICITY_ACTIONABLE:
        return Delivery(event if event in FINICITY_PASSIVE else "other", ignored=True)
    event_id = doc.get("eventId")
    if event_id is not None and not (isinstance(event_id, str) and 0 < len(event_id) <= 200):
        raise Malformed("eventId is not a string", event)
    key = f"e:{event_id}" if event_id else _body_key(body)
    return Delivery(event, (_owner(doc.get("customerId"), event),), key, FINICITY_KEEP)


def mx(body: bytes) -> Delivery:
    """``CONNECTION_STATUS`` and ``AGGREGATION`` (``user_guid`` at the top), member webhooks
    (``{"action", "member": {…, "user_guid"}}``); anything else is ignored. MX sends no event
    id, so the dedupe key is the body's hash: an identical notice within 24 h is a redelivery
    (the poll still catches what it would have shown)."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        raise Malformed("not an object")
    type_ = doc.get("type")
    member = doc.get("member")
    if isinstance(member, dict) and type_ in (None, "MEMBER"):
        kind, owner = "member", member.get("user_guid")
    elif isinstance(type_, str) and type_.upper() in MX_ACTIONABLE:
        kind, owner = MX_ACTIONABLE[type_.upper()], doc.get("user_guid")
    else:
        return Delivery("other", ignored=True)
    return Delivery(kind, (_owner(owner, kind),), _body_key(body), MX_KEEP)


def txpush(body: bytes) -> Delivery:
    """``{"event": {"class": "account"|"transaction", "type", "records": [...]}}``: account
    events name their customer in each record; transaction events are ignored. No event id:
    the key is the records' (id, aggregationAttemptDate, aggregationStatusCode)."""
    doc = parse_json(body)
    event = doc.get("event") if isinstance(doc, dict) else None
    if not isinstance(event, dict):
        raise Malformed("no event")
    if event.get("class") == "transaction":
        return Delivery("txpush_transaction", ignored=True)
    if event.get("class") != "account":
        return Delivery("other", ignored=True)
    records = event.get("records")
    if not isinstance(records, list) or not records or not all(
            isinstance(r, dict) for r in records):
        raise Malformed("no account records", "txpush_account")
    owners = tuple(dict.fromkeys(_owner(r.get("customerId"), "txpush_account")
                                 for r in records[:_MAX_OWNERS]))
    facts = sorted(json.dumps([str(r.get("id")), str(r.get("aggregationAttemptDate")),
                               str(r.get("aggregationStatusCode"))]) for r in records)
    key = "t:" + hashlib.sha256("\n".join(facts).encode()).hexdigest()
    return Delivery("txpush_account", owners, key, TXPUSH_KEEP)
