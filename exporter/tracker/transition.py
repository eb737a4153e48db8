"""The product's central rule: (previous state, record, code facts, now) → (new state, events).

Pure: no storage, no clock, no I/O. The session calls it once per record and stores what
it returns; tests drive it as a table of cases.

- MFA streaks count *distinct* aggregation attempts: only an attempt later than the stored
  one moves the streak. An OTP code (Finicity 185, MX category mfa) extends it; a success
  ends it and remembers there was one (``after_fix``), so falling back to MFA right after a
  fix is a relapse; anything else resets it. An account is an OTP suspect while its code
  is an OTP code and its streak reached the threshold or it relapsed.
- ``broken_since`` is set when an account leaves a healthy category (ok or manual), kept
  across code changes while it stays broken, cleared when it is healthy again.
- A record without a success time keeps the last success stored.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.records import AccountStatus
from exporter.tracker.events import AccountEvent, EventKind

OK = "ok"


class CodeFacts(NamedTuple):
    """What the catalog says about one (provider, code), resolved once and cached."""

    code: str
    """the label value (``"other"`` for unknown codes beyond the cardinality cap)"""
    category: str
    fixable: bool
    otp: bool
    """counts toward the OTP streak (Finicity 185; MX category mfa)"""
    ok: bool
    healthy: bool
    """ok or manual: not broken"""


class AccountState(NamedTuple):
    """The tracker's state of one account. ``category`` and ``fixable`` derive from the code
    (they are not stored); the fields before ``attempt_ts`` change rarely, the last two
    nightly — the session relies on that order to spot "only the times moved"."""

    institution_id: str
    code: str
    category: str
    fixable: bool
    broken_since: float | None
    mfa_streak: int
    otp_suspect: bool
    relapsed: bool
    """fell back to MFA right after a fix (and is still there)"""
    after_fix: bool
    """the last distinct attempt succeeded after an MFA streak"""
    attempt_ts: float | None
    """the newest aggregation attempt seen"""
    success_ts: float | None
    """the last successful aggregation"""


_new = tuple.__new__  # (AccountState, fields): a NamedTuple built in C
STABLE_FIELDS = AccountState._fields.index("attempt_ts")
"""``state[:STABLE_FIELDS]`` equal ⇒ at most the attempt and success times moved."""


def transition(prev: AccountState | None, record: AccountStatus, facts: CodeFacts,
               now: float, otp_threshold: int, *, emit: bool = True,
               steady: bool = False) -> tuple[AccountState, list[AccountEvent]]:
    """The account's next state and the events of the change. ``steady`` also emits
    STILL_BROKEN (only steady subscribers receive it); ``emit=False`` skips building events
    nobody receives (the state is the same either way)."""
    code, category, fixable, otp_code, ok, healthy = facts
    attempt, success = record.attempt_ts, record.success_ts
    if prev is None:
        streak, relapsed, after_fix, prev_attempt = 0, False, False, None
        broken = None if healthy else (attempt or now)
    else:
        (_i, p_code, p_category, p_fixable, p_broken, streak, p_otp, p_relapsed, after_fix,
         prev_attempt, p_success) = prev
        relapsed = p_relapsed
        if success is None:
            success = p_success
        broken = None if healthy else (p_broken or attempt or now)
    if attempt is not None and (prev_attempt is None or attempt > prev_attempt):
        if otp_code:  # a new attempt, MFA again
            relapsed, after_fix = bool(relapsed or after_fix), False
            streak += 1
        elif ok:
            relapsed, after_fix, streak = False, streak > 0, 0
        else:
            relapsed, after_fix, streak = False, False, 0
    elif prev_attempt is not None:
        attempt = prev_attempt  # the same or an older attempt: keep the newest seen
    otp = otp_code and (streak >= otp_threshold or relapsed)
    state = _new(AccountState, (record.institution_id, code, category, fixable, broken, streak,
                                otp, relapsed, after_fix, attempt, success))
    if not emit:
        return state, []
    if prev is None:
        if category == OK:
            return state, []
        kinds = [EventKind.ENTERED]
        if fixable:
            kinds.append(EventKind.BECAME_FIXABLE)
        if otp:
            kinds.append(EventKind.OTP_SUSPECT)
        return state, _events(kinds, record, state, None, broken, now)
    if p_code == code and otp == p_otp and relapsed == p_relapsed:
        if steady and fixable and category != OK:
            return state, _events([EventKind.STILL_BROKEN], record, state, prev, broken, now)
        return state, []
    kinds = []
    if p_category != category:
        if p_category != OK:
            kinds.append(EventKind.LEFT)
        kinds.append(EventKind.ENTERED if category != OK else EventKind.BACK_TO_OK)
    if fixable and not p_fixable:
        kinds.append(EventKind.BECAME_FIXABLE)
    if relapsed and not p_relapsed:
        kinds.append(EventKind.RELAPSED)
    if otp and not p_otp:
        kinds.append(EventKind.OTP_SUSPECT)
    if not kinds:
        return state, []
    return state, _events(kinds, record, state, prev, broken or p_broken, now)


def _events(kinds: list[EventKind], record: AccountStatus, state: AccountState,
            prev: AccountState | None, broken_since: float | None,
            now: float) -> list[AccountEvent]:
    return [AccountEvent(kind, record.source, record.provider, record.account_key,
                         record.owner_id, record.login_id, state.institution_id,
                         record.institution, state.code, state.category, state.fixable,
                         bool(state.otp_suspect), prev.code if prev else None,
                         prev.category if prev else None, broken_since, now)
            for kind in kinds]
