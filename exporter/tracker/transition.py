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
- The consent end is the record's (Finicity ``authorizationEndDate`` when it expires, else
  None); a change of it is a CONSENT event (a later end: the user renewed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from exporter.records import AccountStatus
from exporter.state import AFTER_FIX, OTP, RELAPSED
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
    """The tracker's state of one account.

    The first eight fields are what the store keeps, in the order it keeps them (a stored
    row becomes a state, and a state a row, by slicing: nothing per field); ``category``
    and ``fixable`` derive from the code and come last. Of the stored fields, those before
    ``attempt_ts`` change rarely and the two times nightly: the session compares those to
    spot "only the times moved". The three MFA marks share one ``flags`` field (bits
    :data:`OTP`, :data:`RELAPSED`, :data:`AFTER_FIX`) and read as booleans by name.
    """

    institution_id: str
    code: str
    broken_since: float | None
    mfa_streak: int
    flags: int
    attempt_ts: float | None
    """the newest aggregation attempt seen"""
    success_ts: float | None
    """the last successful aggregation"""
    consent_end: float | None
    """when the user's consent ends (Finicity OAuth), None when it does not expire"""
    category: str
    fixable: bool

    @property
    def otp_suspect(self) -> bool:
        return bool(self.flags & OTP)

    @property
    def relapsed(self) -> bool:
        """fell back to MFA right after a fix (and is still there)"""
        return bool(self.flags & RELAPSED)

    @property
    def after_fix(self) -> bool:
        """the last distinct attempt succeeded after an MFA streak"""
        return bool(self.flags & AFTER_FIX)


_new = tuple.__new__  # (AccountState, fields): a NamedTuple built in C
STORED_FIELDS = AccountState._fields.index("category")
"""``state[:STORED_FIELDS]`` is what the store keeps of a state."""
_NO_EVENTS: tuple[AccountEvent, ...] = ()
"""what most transitions return (shared: nothing allocated per record)"""


def transition(prev: AccountState | None, record: AccountStatus, facts: CodeFacts,
               now: float, otp_threshold: int, *, emit: bool = True,
               steady: bool = False) -> tuple[AccountState, Sequence[AccountEvent]]:
    """The account's next state and the events of the change. ``steady`` also emits
    STILL_BROKEN (only steady subscribers receive it) and CONSENT for an unchanged consent
    end (so a consumer that missed a change catches up); ``emit=False`` skips building events
    nobody receives (the state is the same either way).

    When nothing moves (a re-poll: the same or an older attempt, same code, institution and
    success) the result is ``prev`` itself, so a caller can tell by identity."""
    code, category, fixable, otp_code, ok, healthy = facts
    attempt, success, consent = record.attempt_ts, record.success_ts, record.consent_end
    p_consent = None
    if prev is None:
        streak = flags = 0
        prev_attempt = None
        broken = None if healthy else (attempt or now)
    else:
        (p_inst, p_code, p_broken, streak, p_flags, prev_attempt, p_success, p_consent,
         p_category, p_fixable) = prev
        # no new attempt (streak and marks stay), and nothing else moved either
        if ((attempt is None or (prev_attempt is not None and attempt <= prev_attempt))
                and p_code == code and p_inst == record.institution_id
                and p_consent == consent
                and (success is None or success == p_success)
                and (p_broken is None) == healthy
                and bool(p_flags & OTP) == bool(
                    otp_code and (streak >= otp_threshold or p_flags & RELAPSED))
                and p_category == category and p_fixable == fixable):
            if emit and steady:  # re-announced to steady subscribers
                kinds = [EventKind.STILL_BROKEN] if fixable and category != OK else []
                if consent is not None:
                    kinds.append(EventKind.CONSENT)
                if kinds:
                    return prev, _events(kinds, record, prev, prev, p_broken, now)
            return prev, _NO_EVENTS
        flags = p_flags
        if success is None:
            success = p_success
        broken = None if healthy else (p_broken or attempt or now)
    if attempt is not None and (prev_attempt is None or attempt > prev_attempt):
        if otp_code:  # a new attempt, MFA again
            flags = RELAPSED if flags & (AFTER_FIX | RELAPSED) else 0
            streak += 1
        elif ok:
            flags = AFTER_FIX if streak else 0
            streak = 0
        else:
            streak = flags = 0
    elif prev_attempt is not None:
        attempt = prev_attempt  # the same or an older attempt: keep the newest seen
    if otp_code and (streak >= otp_threshold or flags & RELAPSED):
        flags |= OTP
    else:
        flags &= ~OTP
    state = _new(AccountState, (record.institution_id, code, broken, streak, flags, attempt,
                                success, consent, category, fixable))
    if not emit:
        return state, _NO_EVENTS
    if consent != p_consent or (steady and consent is not None):
        return state, _with_consent(transition_events(prev, record, state, now, steady),
                                    record, state, prev, now)
    return state, transition_events(prev, record, state, now, steady)


def transition_events(prev: AccountState | None, record: AccountStatus, state: AccountState,
                      now: float, steady: bool) -> Sequence[AccountEvent]:
    """The category, fixability and OTP events of a change from ``prev`` to ``state``."""
    code, category, fixable, broken = state.code, state.category, state.fixable, state.broken_since
    flags = state.flags
    otp, relapsed = flags & OTP, flags & RELAPSED
    if prev is None:
        if category == OK:
            return _NO_EVENTS
        kinds = [EventKind.ENTERED]
        if fixable:
            kinds.append(EventKind.BECAME_FIXABLE)
        if otp:
            kinds.append(EventKind.OTP_SUSPECT)
        return _events(kinds, record, state, None, broken, now)
    p_code, p_flags, p_category, p_fixable = prev.code, prev.flags, prev.category, prev.fixable
    p_otp, p_relapsed = p_flags & OTP, p_flags & RELAPSED
    if p_code == code and otp == p_otp and relapsed == p_relapsed:
        if steady and fixable and category != OK:
            return _events([EventKind.STILL_BROKEN], record, state, prev, broken, now)
        return _NO_EVENTS
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
        return _NO_EVENTS
    return _events(kinds, record, state, prev, broken or prev.broken_since, now)


def _with_consent(events: Sequence[AccountEvent], record: AccountStatus, state: AccountState,
                  prev: AccountState | None, now: float) -> list[AccountEvent]:
    """``events`` and the CONSENT event of a changed consent end."""
    return [*events, *_events([EventKind.CONSENT], record, state, prev, state.broken_since, now)]


def _events(kinds: list[EventKind], record: AccountStatus, state: AccountState,
            prev: AccountState | None, broken_since: float | None,
            now: float) -> list[AccountEvent]:
    return [AccountEvent(kind, record.source, record.provider, record.account_key,
                         record.owner_id, record.login_id, state.institution_id,
                         record.institution, state.code, state.category, state.fixable,
                         state.otp_suspect, prev.code if prev else None,
                         prev.category if prev else None, broken_since, now,
                         state.consent_end)
            for kind in kinds]
