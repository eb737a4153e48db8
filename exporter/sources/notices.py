"""What the aggregators' webhook bodies share: the typed :class:`Delivery` a verified body
becomes, the :class:`Malformed` error, the owner id type and the body's hash key.

Pure functions over the raw body; no I/O. A payload is a hint, never state: only the owner
(Finicity customerId, MX user_guid) is taken from it, everything else comes from the re-read.
Shapes and uncertainties: reference/upstream-apis.md, Part E.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

HOUR = 3600.0
_OWNER = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


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


def _owner(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("owner", "owner id missing or not a string")
    text = str(value)
    if not _OWNER.match(text):
        raise PydanticCustomError("owner", "owner id is not a plain id")
    return text


Owner = Annotated[str, BeforeValidator(_owner)]
"""A plain id (a string or an integer) of at most 128 characters: safe to re-read with."""
_OWNER_ADAPTER: TypeAdapter[str] = TypeAdapter(Owner)


def owner(value: object, kind: str) -> str:
    """``value`` as an :data:`Owner`; :class:`Malformed` (of ``kind``) when it is none."""
    try:
        return _OWNER_ADAPTER.validate_python(value)
    except ValidationError as exc:
        raise Malformed(exc.errors(include_url=False)[0]["msg"], kind) from None


def body_key(body: bytes) -> str:
    """The dedupe key of a sender that gives no event id: the body's hash."""
    return "b:" + hashlib.sha256(body).hexdigest()
