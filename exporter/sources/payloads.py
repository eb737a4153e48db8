"""What every aggregator's payload models share: lenient field types, the error body and the
:class:`PayloadReader` that validates and counts.

Every body the sources read is validated by a model of its aggregator package
(``exporter.upstreams.finicity.payloads``, ``exporter.upstreams.mx.payloads``) built on
these types, leniently where the APIs are loose (ids and codes as numbers or strings, epoch
dates as numbers, strings or ISO-8601, flags as ``"true"``), and strictly where a record
would otherwise be wrong. What cannot be used is counted once, under one set of reasons
(:data:`REASONS`, the ``reason`` label of ``openfinance_invalid_records_total``):

- ``malformed_json``: a 2xx body that is not JSON (counted by the client);
- ``missing_field``: a required field or list is absent or empty, or an item is not an object;
- ``invalid_code``: a status code that cannot be a code;
- ``invalid_timestamp``: a date that is unparseable or outside [2000-01-01, now + 2 days];
  the record is kept with that time as None;
- ``invalid_id``: an id of the wrong type, or one that is not a printable string;
- ``malformed_institution``: an institution body that is no institution record (it declares
  nothing);
- ``invalid_declared_status``: a declared status that is no string (ignored);
- ``unknown_declared_status``: a declared status outside the documented set (shown as
  ``other``).

Models ignore fields they do not name: PII in the payloads never reaches a record.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

from exporter.records import MAX_LABEL
from exporter.sources.base import Clock, UpstreamObserver
from exporter.sources.errors import MalformedResponse

if TYPE_CHECKING:
    from exporter.sources.drift import DriftMeter

log = logging.getLogger(__name__)

EARLIEST_TS = 946_684_800.0
"""2000-01-01T00:00:00Z: anything earlier is garbage (0, a day count …)."""
FUTURE_TOLERANCE = 2 * 86_400.0
"""How far ahead of now a date may be (clock skew); beyond it, milliseconds or garbage."""
NEVER_AGGREGATED = "NONE"
"""The code of a Finicity account never aggregated and of an MX member with a null status."""
REASONS = ("malformed_json", "missing_field", "invalid_code", "invalid_timestamp", "invalid_id",
           "malformed_institution", "invalid_declared_status", "unknown_declared_status")
"""Every value of ``invalid_records{reason}``, whichever aggregator counts it."""
VALIDATION_REASONS = REASONS[:5]
"""The reasons a failed validation can carry (the rest are counted where they are noted)."""

M = TypeVar("M", bound=BaseModel)


class Notes:
    """Validation context of one item: the clock's now, and the fields repaired on the way."""

    __slots__ = ("now", "reasons")

    def __init__(self, now: float):
        self.now = now
        self.reasons: list[str] = []


# --------------------------------------------------------------------------- loose field types


def _id(raw: object) -> str | None:
    """An id sent as a string or a number, as a string; None when absent or empty."""
    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        if text.isprintable() and len(text) <= MAX_LABEL:
            return text
    elif isinstance(raw, int) and not isinstance(raw, bool):
        return str(raw)
    elif isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    raise PydanticCustomError("invalid_id", "not an id")


def _required_id(raw: object) -> str:
    value = _id(raw)
    if value is None:
        raise PydanticCustomError("missing_field", "absent or empty")
    return value


def _epoch(raw: object) -> float | None:
    """Epoch seconds from an epoch number, an epoch string or an ISO-8601 string."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        return float(raw)
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def note(info: ValidationInfo, reason: str) -> None:
    """Count ``reason`` once the item is validated, when a :class:`PayloadReader` validates
    it (a field kept in a repaired form: the record is kept)."""
    if isinstance(info.context, Notes):
        info.context.reasons.append(reason)


def _plausible(raw: object, info: ValidationInfo, ahead: float) -> float | None:
    """A timestamp in [2000-01-01, now + ``ahead``], None when absent; garbage becomes None
    and is noted."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    now = info.context.now if isinstance(info.context, Notes) else time.time()
    value = _epoch(raw)
    if value is not None and math.isfinite(value) and EARLIEST_TS <= value <= now + ahead:
        return value
    note(info, "invalid_timestamp")
    return None


def _timestamp(raw: object, info: ValidationInfo) -> float | None:
    """A plausible past timestamp (within the clock skew of now)."""
    return _plausible(raw, info, FUTURE_TOLERANCE)


CONSENT_HORIZON = 10 * 366 * 86_400.0
"""How far ahead a consent end may lie; beyond it, milliseconds or garbage."""


def _consent_end(raw: object, info: ValidationInfo) -> float | None:
    """A consent end (Finicity ``authorizationEndDate``): epoch seconds as a number or a
    string, or ISO-8601 as in some of the spec's examples. In the future as a rule, so
    bounded by :data:`CONSENT_HORIZON` instead of the clock skew."""
    return _plausible(raw, info, CONSENT_HORIZON)


def read_integer(raw: object) -> int | None:
    """An integer sent as a number or a string (``185``, ``"185"``, ``"10023,"``, ``185.0``)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str):
        text = raw.strip().rstrip(",").strip()
        if text.isascii() and text.lstrip("-").isdigit():
            return int(text)
    return None


def read_flag(raw: object) -> bool | None:
    """``true``/``false`` as booleans or strings; anything else is unknown (None)."""
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        return {"true": True, "false": False}.get(raw.strip().lower())
    return None


def _count(raw: object) -> int | None:
    value = read_integer(raw)
    return value if value is not None and value >= 0 else None


def _text(raw: object) -> str | None:
    """A display text: a non-empty string (or a number, as a string), else None."""
    if isinstance(raw, str):
        return raw.strip() or None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return str(raw)
    return None


def object_or_empty(raw: object) -> object:
    """A nested object that is optional: anything but an object reads as an empty one."""
    return raw if isinstance(raw, dict) else {}


Id = Annotated[str | None, BeforeValidator(_id)]
RequiredId = Annotated[str, BeforeValidator(_required_id)]
Timestamp = Annotated[float | None, BeforeValidator(_timestamp)]
ConsentEnd = Annotated[float | None, BeforeValidator(_consent_end)]
Flag = Annotated[bool | None, BeforeValidator(read_flag)]
Count = Annotated[int | None, BeforeValidator(_count)]
Integer = Annotated[int | None, BeforeValidator(read_integer)]


def _url(raw: object) -> str:
    """A link for the user's browser: an absolute http(s) URL. Real Connect Fix links carry
    a signature and run past any id length, so only a generous bound applies."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise PydanticCustomError("missing_field", "absent or empty")
    text = raw.strip() if isinstance(raw, str) else ""
    if text.startswith(("https://", "http://")) and len(text) <= 8192 and text.isprintable():
        return text
    raise PydanticCustomError("invalid_id", "not an http(s) URL")


def _plain_text(raw: object) -> str | None:
    """A string that is not blank, stripped; anything else is None."""
    return (raw.strip() or None) if isinstance(raw, str) else None


Text = Annotated[str | None, BeforeValidator(_text)]
PlainText = Annotated[str | None, BeforeValidator(_plain_text)]
"""A free-form string such as a home page address (checked where it is used)."""
Url = Annotated[str, BeforeValidator(_url)]
Items = list[Any]
"""A list whose items are validated one by one, so that one bad item costs only itself."""


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# --------------------------------------------------------------------------- errors


class ErrorDetail(Payload):
    message: Text = None


def _error_detail(raw: object) -> object:
    return {"message": raw} if isinstance(raw, str) else object_or_empty(raw)


class ErrorPayload(Payload):
    """Finicity ``{code, message}``, MX ``{"error": {"message"}}`` or ``{"error": "…"}``."""

    code: Integer = None
    message: Text = None
    error: Annotated[ErrorDetail, BeforeValidator(_error_detail)] = ErrorDetail()

    @classmethod
    def read(cls, body: object) -> ErrorPayload:
        """Never raises: an unreadable error body is an empty one."""
        try:
            return cls.model_validate(body)
        except ValidationError:
            return cls()

    def text(self) -> str | None:
        message = self.message or self.error.message
        return message[:200] if message is not None else None


# --------------------------------------------------------------------------- the boundary


def _reason(exc: ValidationError) -> str:
    kind = exc.errors(include_url=False, include_context=False, include_input=False)[0]["type"]
    return kind if kind in VALIDATION_REASONS else "missing_field"


@functools.cache
def _list_of(model: type[M]) -> TypeAdapter[list[M]]:
    return TypeAdapter(list[model])  # type: ignore[valid-type]


class PayloadReader:
    """Validates one source's payloads and counts what it rejects or repairs, once each.

    The first occurrence of each reason is logged at warning level (never with ids); later
    ones are only counted.
    """

    def __init__(self, source: str, observer: UpstreamObserver, clock: Clock,
                 drift: DriftMeter | None = None):
        self.source = source
        self._observer = observer
        self._drift = drift
        self._clock = clock
        self._logged: set[str] = set()

    def invalid(self, reason: str) -> None:
        """Count one unusable or repaired value under ``reason`` (one of :data:`REASONS`)."""
        self._observer.invalid_record(self.source, reason)
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("invalid upstream record skipped or repaired source=%s reason=%s "
                        "(further ones are only counted)", self.source, reason)

    def body(self, model: type[M], raw: object, route: str) -> M:
        """A whole answer; one that does not fit is counted and raises ``MalformedResponse``."""
        notes = Notes(self._clock())
        try:
            parsed = model.model_validate(raw, context=notes)
        except ValidationError as exc:
            reason = _reason(exc)
            self.invalid(reason)
            where = ".".join(str(p) for p in exc.errors()[0]["loc"]) or "the body"
            if self._drift is not None:
                self._drift.shape(route, where)
            raise MalformedResponse(f"{route} answered an unusable body ({reason} at {where})",
                                    route=route, status="200") from None
        self._count(notes)
        return parsed

    def items(self, model: type[M], raws: list[Any]) -> list[M]:
        """A page's usable items, in one validation call; one bad item costs only itself.

        The whole list is validated at once (about half the CPU of item by item); when some
        item does not fit, the page is validated again item by item, so that the others are
        kept and each reason is counted once, exactly as :meth:`item` does.
        """
        notes = Notes(self._clock())
        try:
            items = _list_of(model).validate_python(raws, context=notes)
        except ValidationError:
            return [i for i in (self.item(model, raw) for raw in raws) if i is not None]
        self._count(notes)
        return items

    def item(self, model: type[M], raw: object) -> M | None:
        """One list item, or None when it is unusable (counted)."""
        notes = Notes(self._clock())
        try:
            item = model.model_validate(raw, context=notes)
        except ValidationError as exc:
            self.invalid(_reason(exc))
            return None
        self._count(notes)
        return item

    def record(self, model: type[M], raw: object, malformed: str) -> M | None:
        """A body read leniently (no drift, no error): one that does not fit is counted as
        ``malformed`` and reads as None."""
        notes = Notes(self._clock())
        try:
            parsed = model.model_validate(raw, context=notes)
        except ValidationError:
            self.invalid(malformed)
            return None
        self._count(notes)
        return parsed

    def _count(self, notes: Notes) -> None:
        for reason in notes.reasons:
            self.invalid(reason)
