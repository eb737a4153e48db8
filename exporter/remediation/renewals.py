"""Consent renewals as pure functions over named fields (no I/O, no clock).

A *consent period* is one login's OAuth consent until its end (Finicity
``authorizationEndDate`` when ``authorizationExpires`` is true; MX publishes none). It gets
at most one ``consent_renewal`` request, ``remediation.renew_before`` ahead of its end
(:func:`renewal_decision`), like a fix request: a link, the storm guard, the outage hold. A
later end seen for the login means its user renewed: the period closes (``renewed``) and the
new one starts. The accounts of a login share its consent; the period ends at the earliest
end among them, so a login counts as renewed once all of them moved past the old end.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from exporter.remediation.episodes import LoginCase, rfc3339
from exporter.tracker.events import AccountEvent, EventKind

KIND_RENEWAL = "consent_renewal"
RENEWED = "renewed"
RENEWAL_ID_BASE = 1 << 62
"""Outbox rows and redirect tokens of a consent period carry its id plus this: one id space
with the fix episodes (whose ids stay far below it)."""


@dataclass(slots=True)
class ConsentPeriod(LoginCase):
    end: float
    """the period's end: the earliest consent end among the login's accounts"""
    seen_at: float
    accounts: dict[str, float] = field(default_factory=dict)
    """account key → its consent end"""
    id: int | None = None
    request_id: str | None = None
    requested_at: float | None = None
    delivered_at: float | None = None
    outcome: str | None = None
    closed_at: float | None = None

    @property
    def outbox_id(self) -> int:
        """The id its outbox row and redirect token carry."""
        assert self.id is not None
        return RENEWAL_ID_BASE + self.id


def apply_consent(period: ConsentPeriod | None, ev: AccountEvent
                  ) -> tuple[ConsentPeriod | None, ConsentPeriod | None, str]:
    """Fold one CONSENT event into its login's open period (``None``: there is none).

    Returns (the period now open, the one that ended, what happened): ``none``, ``opened``,
    ``updated``, ``renewed`` (the old period ended by a later end, a new one is open) or
    ``ended`` (no account of the login has an expiring consent any more).
    """
    if ev.kind is not EventKind.CONSENT or not ev.owner_id or not ev.login_id:
        return period, None, "none"
    end = ev.consent_end
    if period is None:
        if end is None:
            return None, None, "none"
        return (ConsentPeriod(ev.source, ev.provider, str(ev.owner_id), str(ev.login_id),
                              ev.institution_id, ev.institution, ev.code, ev.category, end,
                              ev.at, {ev.account_key: end}), None, "opened")
    accounts = dict(period.accounts)
    if end is None:
        accounts.pop(ev.account_key, None)
    else:
        accounts[ev.account_key] = end
    if accounts == period.accounts:  # seen again, unchanged
        return period, None, "none"
    if not accounts:
        period.accounts, period.closed_at = {}, ev.at
        return None, period, "ended"
    new_end = min(accounts.values())
    period.code, period.category, period.institution = ev.code, ev.category, ev.institution
    if new_end > period.end:  # every account moved past the old end: renewed
        period.closed_at = ev.at
        if period.delivered_at is not None:
            period.outcome = RENEWED
        fresh = ConsentPeriod(period.source, period.provider, period.owner_id, period.login_id,
                              ev.institution_id, ev.institution, ev.code, ev.category, new_end,
                              ev.at, accounts)
        return fresh, period, "renewed"
    period.accounts, period.end = accounts, new_end
    return period, None, "updated"


def renewal_decision(period: ConsentPeriod, now: float, *, renew_before: float,
                     in_outage: bool) -> str:
    """``create`` the period's request now, ``wait`` (ask again later), ``expired`` (its end
    passed without a request: the login breaks with 947 and gets a fix request) or
    ``never``."""
    if renew_before <= 0 or period.request_id is not None or period.closed_at is not None:
        return "never"
    if now >= period.end:
        return "expired"
    if now < period.end - renew_before or in_outage:
        return "wait"
    return "create"


def renewal_body(period: ConsentPeriod, request_id: str) -> dict[str, Any]:
    """The JSON the partner's endpoint receives (``link`` is added at delivery): a fix
    request's fields, ``broken_since`` null (nothing is broken yet), plus
    ``authorization_end``."""
    return {**period.request_fields(request_id, KIND_RENEWAL, sorted(period.accounts), None),
            "authorization_end": rfc3339(period.end)}
