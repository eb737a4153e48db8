"""The rules of the repair loop as pure functions over named fields (no I/O, no clock).

An *episode* is one breakage of one login: Finicity (customerId, institutionLoginId), MX
(user_guid, member_guid). It opens when an account of the login enters a fixable code and
closes when every account it holds is back at ok (``fixed``) or gone (closed at the bank,
deleted upstream). It gets at most one fix request, created when it is due
(:func:`request_decision`). The storage code (:mod:`.store`) calls these functions and
persists what they return.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exporter.tracker.events import AccountEvent, EventKind

OK = "ok"
ACCOUNT_CLOSED = "account_closed"
OUTAGE_CATEGORY = "institution"
# The outage alert's default rule (alerts/params.yml: outage_ratio, outage_min_accounts).
OUTAGE_RATIO = 0.2
OUTAGE_MIN_ACCOUNTS = 10
REBROKE_WINDOW = 7 * 86400.0
STORM_WINDOW = 3600.0
BACKFILL_WINDOW = 3600.0

KIND_FIX = "fix"
KIND_OTP = "otp_each_refresh"
OTP_GUIDANCE = (
    "The bank asks this login for a one-time passcode on every refresh (Finicity 185 again "
    "after a fix, or 931). A repair link cannot stop that: tell the user, and let them "
    "refresh while they are present to enter the passcode each time.")

@dataclass(frozen=True, slots=True)
class Mark:
    """One broken account of the login, as its last event left it."""

    code: str
    category: str
    fixable: bool
    otp: bool


@dataclass(slots=True)
class LoginCase:
    """What a fix episode and a consent period share: the login, its institution and the
    code and category it shows; one request, with the fields below, is sent for it."""

    source: str
    provider: str
    owner_id: str
    login_id: str
    institution_id: str
    institution: str
    code: str
    category: str

    @property
    def login(self) -> tuple[str, str, str]:
        return (self.source, self.owner_id, self.login_id)

    def request_fields(self, request_id: str, kind: str, account_ids: list[str],
                       broken_since: str | None) -> dict[str, Any]:
        """The JSON fields every request to the partner's endpoint carries, in that order."""
        owner_field = "user_guid" if self.provider == "mx" else "customer_id"
        return {
            "id": request_id, "kind": kind, "source": self.source, "provider": self.provider,
            "institution_id": self.institution_id, "institution": self.institution,
            "code": str(self.code), "category": self.category,
            owner_field: self.owner_id, "login_id": self.login_id,
            "account_ids": account_ids, "broken_since": broken_since,
        }


@dataclass(slots=True)
class Episode(LoginCase):
    """One breakage of one login; ``code`` is the latest fixable code (the request carries
    the one current at its creation)."""

    opened_at: float
    broken_since: float
    backlog: bool
    accounts: dict[str, Mark] = field(default_factory=dict)
    id: int | None = None
    any_fixed: bool = False
    request_id: str | None = None
    kind: str | None = None
    request_category: str | None = None
    requested_at: float | None = None
    delivered_at: float | None = None
    outcome: str | None = None
    closed_at: float | None = None
    close_reason: str | None = None
    rebroke: bool = False
    request_code: str | None = None
    """the fixable code the request was made for (set with ``request_id``)"""

    @property
    def fixable_now(self) -> bool:
        return any(m.fixable for m in self.accounts.values())

    @property
    def otp(self) -> bool:
        return any(m.otp for m in self.accounts.values())


def login_of(ev: AccountEvent) -> tuple[str, str, str] | None:
    """The episode key of an event, or None when the payload lacked an id."""
    if not ev.owner_id or not ev.login_id:
        return None
    return (ev.source, ev.owner_id, ev.login_id)


def apply_event(ep: Episode | None, ev: AccountEvent, *, backlog: bool
                ) -> tuple[Episode | None, str]:
    """Fold one account event into its login's open episode (``None`` if there is none).

    Returns the episode and what happened: ``none``, ``opened``, ``updated`` or ``closed``
    (then ``close_reason`` is ``fixed`` or ``gone``). ``backlog`` marks an episode opened now
    as part of the backlog (before the first complete sweep after enabling).
    """
    if ev.kind is EventKind.LEFT:
        return ep, "none"  # always paired with ENTERED or BACK_TO_OK for the same account
    healed = ev.kind is EventKind.BACK_TO_OK or ev.category == OK
    gone = ev.kind is EventKind.REMOVED or ev.category == ACCOUNT_CLOSED
    if not healed and not gone:
        mark = Mark(ev.code, ev.category, bool(ev.fixable), bool(ev.otp_suspect))
        since = ev.broken_since if ev.broken_since is not None else ev.at
        if ep is None:
            if not ev.fixable:
                return None, "none"
            ep = Episode(ev.source, ev.provider, str(ev.owner_id), str(ev.login_id),
                         ev.institution_id, ev.institution, ev.code, ev.category,
                         opened_at=ev.at, broken_since=since, backlog=backlog,
                         accounts={ev.account_key: mark})
            return ep, "opened"
        if ep.accounts.get(ev.account_key) == mark and since >= ep.broken_since:
            return ep, "none"
        ep.accounts[ev.account_key] = mark
        ep.broken_since = min(ep.broken_since, since)
        ep.institution = ev.institution
        if ev.fixable:
            ep.code, ep.category = ev.code, ev.category
        return ep, "updated"
    if ep is None or ev.account_key not in ep.accounts:
        return ep, "none"
    del ep.accounts[ev.account_key]
    ep.any_fixed = ep.any_fixed or healed
    if ep.accounts:
        return ep, "updated"
    ep.closed_at = ev.at
    ep.close_reason = "fixed" if ep.any_fixed else "gone"
    return ep, "closed"


def rebroke(previous_fixed_at: float | None, now: float) -> bool:
    """A login whose last episode ended fixed breaks again within 7 days."""
    return previous_fixed_at is not None and now - previous_fixed_at <= REBROKE_WINDOW


def request_decision(ep: Episode, now: float, *, min_broken_for: float, backfill: bool,
                     in_outage: bool, backfill_left: int) -> str:
    """``create`` the episode's request now, ``wait`` (ask again later) or ``never``."""
    if ep.request_id is not None or ep.closed_at is not None:
        return "never"
    if ep.backlog and not backfill:
        return "never"
    if not ep.fixable_now or in_outage:
        return "wait"
    if now - ep.broken_since < min_broken_for:
        return "wait"
    if ep.backlog and backfill_left <= 0:
        return "wait"
    return "create"


def request_kind(ep: Episode) -> str:
    """Decided once, when the request is created: an OTP suspect gets no link."""
    return KIND_OTP if ep.otp else KIND_FIX


def storm_limit(logins: int, storm_min: int, storm_share: float) -> int:
    """New requests one institution may produce per hour before further ones are held."""
    return max(storm_min, math.ceil(storm_share * logins))


def abandoned(ep: Episode, now: float, retry_for: float, abandon_after: float) -> bool:
    return (ep.delivered_at is not None and ep.closed_at is None and ep.outcome is None
            and ep.requested_at is not None
            and now >= ep.requested_at + retry_for + abandon_after)


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def request_body(ep: Episode, request_id: str, kind: str) -> dict[str, Any]:
    """The JSON the partner's endpoint receives (``link`` is added at delivery)."""
    # An MX record is a member: its account guids are not known to the tracker.
    account_ids = [] if ep.provider == "mx" else sorted(ep.accounts)
    body = ep.request_fields(request_id, kind, account_ids, rfc3339(ep.broken_since))
    if kind == KIND_OTP:
        body["guidance"] = OTP_GUIDANCE
    return body


@dataclass(frozen=True, slots=True)
class FleetFacts:
    """What the snapshot says about institutions: outages and sizes, per (source, id)."""

    outages: frozenset[tuple[str, str]] = frozenset()
    accounts: dict[tuple[str, str], int] = field(default_factory=dict)


def fleet_facts(snapshot: Any) -> FleetFacts:
    """From ``Tracker.snapshot()``: an institution is in an outage when ≥ 20 % of its
    accounts, and ≥ 10 of them, are in category ``institution`` (the outage alert's rule)."""
    total: Counter[tuple[str, str]] = Counter()
    down: Counter[tuple[str, str]] = Counter()
    for name, agg in getattr(snapshot, "sources", {}).items():
        for institution_id, _institution, _code, category, count in agg.accounts:
            total[(name, institution_id)] += count
            if category == OUTAGE_CATEGORY:
                down[(name, institution_id)] += count
    outages = frozenset(k for k, n in down.items()
                        if n >= OUTAGE_MIN_ACCOUNTS and n >= OUTAGE_RATIO * total[k])
    return FleetFacts(outages, dict(total))
