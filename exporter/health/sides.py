"""Which side of a connection a category blames, and when an institution counts as down.

Plaid's institution status reports success, institution errors and Plaid's own errors, and
leaves user errors out: a user who mistyped a password says nothing about the bank. We do
the same with our categories. The sides and thresholds here are the single definition: the
recording rules (``alerts/health_rules.py``) are generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass

SIDES: dict[str, tuple[str, ...]] = {
    "ok": ("ok",),
    "institution": ("institution",),
    "aggregator": ("aggregator", "unsupported", "disabled", "unknown"),
    "user": ("credentials", "user_action", "mfa", "oauth", "account_closed"),
    "none": ("pending", "manual"),
}
"""side → categories. ``institution``: outage, maintenance, connection being built or
repaired at the bank (the only side that counts toward an outage). ``aggregator``: the
aggregator's own errors and everything else that is neither the bank's nor the user's
(unsupported institution, paused by the aggregator, codes missing from the catalog).
``user``: the user must act (credentials, MFA, OAuth consent, account closed) — excluded
from the health share, as Plaid does. ``none``: no verdict (not aggregated yet, manual)."""

HEALTH_SIDES = ("ok", "institution", "aggregator")
"""The sides whose shares make up the health breakdown; they sum to 1."""

SIDE_OF_CATEGORY: dict[str, str] = {c: side for side, cats in SIDES.items() for c in cats}

STATES = ("healthy", "degraded", "down")
NO_STATE = "insufficient_data"


def side_of(category: str) -> str:
    """The side a category blames; a category this module does not know counts as aggregator/other."""
    return SIDE_OF_CATEGORY.get(category, "aggregator")


def categories_regex(side: str) -> str:
    """PromQL regex of the categories of one side, e.g. ``credentials|user_action|…``."""
    return "|".join(SIDES[side])


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The recorded state's thresholds; the rules use the same numbers (``health_*`` parameters).

    With ``n`` = accounts on the health sides (ok + institution + aggregator) and ``success`` =
    ok / n: fewer than ``min_accounts`` → no state; ``success < down_below`` → down;
    ``success < degraded_below`` → degraded; otherwise healthy.
    """

    min_accounts: int = 10
    degraded_below: float = 0.9
    down_below: float = 0.5
    refresh_delayed_after: float = 2 * 86400.0
    """median age of the last successful aggregation above which refresh is ``delayed``"""
    refresh_stopped_after: float = 7 * 86400.0
    """...and above which it is ``stopped`` (both must be bounds of the age histogram)"""

    def state(self, ok: int, attempted: int) -> str:
        if attempted < self.min_accounts or attempted <= 0:
            return NO_STATE
        success = ok / attempted
        if success < self.down_below:
            return "down"
        if success < self.degraded_below:
            return "degraded"
        return "healthy"


DEFAULT_THRESHOLDS = Thresholds()
