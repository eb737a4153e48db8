"""Account events: what one committed chunk changed, for consumers outside the tracker.

The tracker emits them strictly after the chunk's transaction committed, so no consumer
ever sees a change that did not land; the repair loop is the first consumer. Subscribers
are registered at wiring time with :meth:`exporter.tracker.Tracker.subscribe`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    ENTERED = "entered"
    """entered a non-ok category, from another category or as a new account"""
    LEFT = "left"
    """left a non-ok category (to another one or to ok)"""
    BECAME_FIXABLE = "became_fixable"
    OTP_SUSPECT = "otp_suspect"
    """became an OTP-loop suspect (crossed the streak threshold, or relapsed)"""
    RELAPSED = "relapsed"
    """fell back into MFA right after a fix"""
    BACK_TO_OK = "back_to_ok"
    REMOVED = "removed"
    """dropped by a complete sweep (gone upstream)"""
    CONSENT = "consent"
    """the account's consent end changed (set, moved, or no longer expiring; a later end
    than before means the user renewed); with a steady subscriber, also every time an
    account with an expiring consent is seen again"""
    STILL_BROKEN = "still_broken"
    """only to subscribers with ``steady=True``: a fixable, non-ok account seen again with
    the same code"""


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """One change of one account. Identifiers are for consumers, never for labels or logs.

    ``broken_since`` is when the account left ok; for LEFT-to-ok and BACK_TO_OK it is the
    start of the episode that just ended. REMOVED events carry no owner or login id (the
    tracker does not store them) and the stored code and category.
    """

    kind: EventKind
    source: str
    provider: str
    account_key: str
    owner_id: str | None
    login_id: str | None
    institution_id: str
    institution: str
    code: str
    category: str
    fixable: bool
    otp_suspect: bool
    previous_code: str | None
    previous_category: str | None
    broken_since: float | None
    at: float
    """the tracker clock's now"""
    consent_end: float | None = None
    """when the account's consent ends (Finicity OAuth), None when it does not expire"""


Subscriber = Callable[[Sequence[AccountEvent]], Awaitable[None]]
