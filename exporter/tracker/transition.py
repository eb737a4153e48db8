"""The product's central rule: (previous state, record, code facts, now) → (new state,
events, the account's contribution to the aggregates). Also the REMOVED events of accounts
gone upstream, and the MFA flag bits it sets and reads (:data:`OTP`, :data:`RELAPSED`,
:data:`AFTER_FIX`).

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
- Nothing moved (the same or an older attempt, the same code, institution, success and
  consent end): the previous state itself comes back, and no contribution moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from exporter.records import AccountStatus
from exporter.tracker.events import AccountEvent, EventKind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from exporter.tracker.aggregates import ChunkDelta

OK = "ok"

OTP = 1
"""``flags`` bit: the account is an OTP-loop suspect."""
RELAPSED = 2
"""``flags`` bit: it fell back to MFA right after a fix (and is still there)."""
AFTER_FIX = 4
"""``flags`` bit: its last distinct attempt succeeded after an MFA streak."""


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
               now: float, otp_threshold: int, *, emit: bool = True, steady: bool = False,
               delta: ChunkDelta | None = None) -> tuple[AccountState, Sequence[AccountEvent]]:
    """The account's next state and the events of the change; with ``delta``, also counts
    the account's contribution to the aggregates into it. ``steady`` also emits
    STILL_BROKEN (only steady subscribers receive it) and CONSENT for an unchanged consent
    end (so a consumer that missed a change catches up); ``emit=False`` skips building events
    nobody receives (the state is the same either way).

    When nothing moves (a re-poll: the same or an older attempt, same code, institution and
    success) the result is ``prev`` itself, so a caller can tell by identity."""
    if prev is not None and _nothing_moved(prev, record, facts, otp_threshold):
        return prev, _seen_again(prev, record, now) if emit and steady else _NO_EVENTS
    state = _next_state(prev, record, facts, now, otp_threshold)
    if delta is not None:
        delta.count(prev, state)
    if not emit:
        return state, _NO_EVENTS
    events = transition_events(prev, record, state, now, steady)
    consent = state.consent_end
    if consent != (prev.consent_end if prev else None) or (steady and consent is not None):
        return state, _with_consent(events, record, state, prev, now)
    return state, events


def _nothing_moved(prev: AccountState, record: AccountStatus, facts: CodeFacts,
                   otp_threshold: int) -> bool:
    """No new attempt (streak and marks stay), and nothing else moved either."""
    attempt, p_attempt = record.attempt_ts, prev.attempt_ts
    if attempt is not None and (p_attempt is None or attempt > p_attempt):
        return False  # a new attempt (most nights: checked first)
    code, category, fixable, otp_code, _ok, healthy = facts
    success = record.success_ts
    (inst, p_code, broken, streak, flags, _a, p_success, consent, p_category, p_fixable) = prev
    return (p_code == code and inst == record.institution_id
            and consent == record.consent_end
            and (success is None or success == p_success)
            and (broken is None) == healthy
            and bool(flags & OTP) == bool(
                otp_code and (streak >= otp_threshold or flags & RELAPSED))
            and p_category == category and p_fixable == fixable)


def _next_state(prev: AccountState | None, record: AccountStatus, facts: CodeFacts,
                now: float, otp_threshold: int) -> AccountState:
    """The state after ``record`` (``prev`` None: a first sighting)."""
    code, category, fixable, otp_code, ok, healthy = facts
    if prev is None:
        streak = flags = 0
        p_attempt = p_success = p_broken = None
    else:
        (_i, _c, p_broken, streak, flags, p_attempt, p_success, _e, _g, _f) = prev
    attempt, success = record.attempt_ts, record.success_ts
    broken = None if healthy else (p_broken or attempt or now)
    if attempt is not None and (p_attempt is None or attempt > p_attempt):  # a new attempt:
        if otp_code:  # MFA again extends the streak (a relapse if right after a fix)
            streak, flags = streak + 1, RELAPSED if flags & (AFTER_FIX | RELAPSED) else 0
        elif ok:  # a success ends it, remembering there was one
            streak, flags = 0, AFTER_FIX if streak else 0
        else:  # anything else resets it
            streak = flags = 0
    else:
        attempt = p_attempt  # the same or an older attempt: keep the newest seen
    if otp_code and (streak >= otp_threshold or flags & RELAPSED):
        flags |= OTP
    else:
        flags &= ~OTP
    return _new(AccountState, (record.institution_id, code, broken, streak, flags, attempt,
                               p_success if success is None else success, record.consent_end,
                               category, fixable))


def _seen_again(prev: AccountState, record: AccountStatus,
                now: float) -> Sequence[AccountEvent]:
    """What steady subscribers hear of an account that did not move: STILL_BROKEN while it
    is fixable and not ok, CONSENT while its consent expires."""
    kinds = [EventKind.STILL_BROKEN] if prev.fixable and prev.category != OK else []
    if record.consent_end is not None:
        kinds.append(EventKind.CONSENT)
    return _events(kinds, record, prev, prev, prev.broken_since, now) if kinds else _NO_EVENTS


def removed(source: str, provider: str, rows: Iterable[tuple], names: dict[str, str],
            classify: Callable[[str], tuple[str, bool]], now: float) -> list[AccountEvent]:
    """The REMOVED events of accounts a complete sweep no longer saw, from their stored
    ``(account_key, institution_id, code, broken_since, flags)``: no owner or login id
    (never stored), the stored code and its category."""
    return [AccountEvent(EventKind.REMOVED, source, provider, key, None, None, inst,
                         names.get(inst, inst), code, *classify(code), bool(flags & OTP),
                         None, None, broken, now)
            for key, inst, code, broken, flags in rows]


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
