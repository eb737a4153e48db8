"""The unit of data that flows from sources to the tracker, and the label rule both apply.

A source turns upstream payloads into :class:`AccountStatus` records; the tracker never sees
upstream JSON. Keeping this module free of I/O lets every layer import it.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LABEL = 200
"""Longest label value (institution display names) the exporter emits."""

STATUS_MISSING = "\x00missing"
"""The ``code`` of a record whose answer lacked the status field itself (not a null status):
upstream drift, never a real status. The tracker keeps such an account's last known state
(and does not start tracking a new one); no parser can produce this value."""


@dataclass(slots=True, frozen=True)
class AccountStatus:
    """One account (Finicity) or member (MX) as seen by one poll, already validated.

    ``account_key`` is stable and opaque (an account id or member guid): it is stored in the
    state database and never used as a label or logged at info level. ``institution_id`` is a
    non-empty, label-safe id and ``institution`` a label-safe display name
    (:func:`clean_label`). ``code`` is the normalised upstream code (``"185"``,
    ``"CHALLENGED"``), ``"NONE"`` for a Finicity account never aggregated and for an MX null
    status, :data:`STATUS_MISSING` when the answer lacked the status field. Times are epoch
    seconds in [2000-01-01, now + 2 days] or ``None``; an ``attempt_ts`` of ``None`` means
    "no settled aggregation attempt to count".

    ``owner_id`` (Finicity customerId, MX user_guid) and ``login_id`` (Finicity
    institutionLoginId, MX member_guid) identify who can repair the account and through
    which login: the repair loop and push re-reads need them. Like ``account_key`` they are
    never labels, never logged at info level, and never stored by the tracker.

    ``consent_end`` (Finicity ``authorizationEndDate`` when ``authorizationExpires`` is
    true; MX publishes no consent end) is when the user's OAuth consent ends, epoch seconds,
    or ``None`` when it does not expire or is not known. Last, with a default, so positional
    constructions keep working.
    """

    source: str
    provider: str
    account_key: str
    institution_id: str
    institution: str
    code: str
    attempt_ts: float | None = None
    success_ts: float | None = None
    owner_id: str | None = None
    login_id: str | None = None
    consent_end: float | None = None


def clean_label(value: object, fallback: str) -> str:
    """A label-safe display string: control characters become spaces, length is bounded.

    Quotes, backslashes and any unicode are kept (the exposition escapes them); lone
    surrogates, which cannot be encoded, are replaced.
    """
    if not isinstance(value, str) or not value.strip():
        return fallback
    if value.isprintable() and len(value) <= MAX_LABEL and value == value.strip():
        return value
    text = "".join(" " if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in value).strip()
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:MAX_LABEL] or fallback
