"""The transition rule on its own: (previous state, record, facts, now) → (state, events).

One table of cases; each runs a sequence of polls of one account through
:func:`transition` alone (no store, no tracker) and checks the last state and events.
"""

from __future__ import annotations

import dataclasses

import pytest

from exporter.records import AccountStatus
from exporter.tracker import AccountState, CodeFacts, EventKind, transition

NOW = 1_763_700_000.0
DAY = 86400.0
K = EventKind

FACTS = {
    "0": CodeFacts("0", "ok", False, False, True, True),
    "103": CodeFacts("103", "credentials", True, False, False, False),
    "185": CodeFacts("185", "mfa", True, True, False, False),
    "910": CodeFacts("910", "institution", False, False, False, False),
    "905": CodeFacts("905", "institution", False, False, False, False),
    "NONE": CodeFacts("NONE", "manual", False, False, False, True),  # as MX's null status
}


def run(polls, *, threshold: int = 3, steady: bool = False, emit: bool = True):
    """Polls are (code, night of the attempt or None, success: "auto" | None | night)."""
    state: AccountState | None = None
    events: list = []
    for i, (code, night, success) in enumerate(polls):
        now = NOW + i * 3600
        attempt = None if night is None else NOW + night * DAY
        if success == "auto":
            success_ts = attempt if code == "0" else None
        else:
            success_ts = None if success is None else NOW + success * DAY
        record = AccountStatus("fin", "finicity", "a1", "4222", "FinBank", code, attempt,
                               success_ts, owner_id="cust-1", login_id="login-1")
        state, events = transition(state, record, FACTS[code], now, threshold, emit=emit,
                                   steady=steady)
    return state, [e.kind for e in events]


def polls(*codes, same_attempt: bool = False):
    return [(c, 0 if same_attempt else n, "auto") for n, c in enumerate(codes)]


CASES = [
    # name, polls, options, expected state fields, expected events of the last poll
    ("first sighting ok", polls("0"), {},
     {"broken_since": None, "mfa_streak": 0, "success_ts": NOW}, []),
    ("first sighting broken and fixable", polls("103"), {},
     {"broken_since": NOW, "category": "credentials", "fixable": True},
     [K.ENTERED, K.BECAME_FIXABLE]),
    ("first sighting broken, not fixable", polls("910"), {},
     {"broken_since": NOW, "fixable": False}, [K.ENTERED]),
    ("repeated polls of one attempt count once", polls("185", "185", "185", same_attempt=True),
     {}, {"mfa_streak": 1, "otp_suspect": False}, []),
    ("a 185 streak reaching the threshold makes a suspect", polls("185", "185", "185"), {},
     {"mfa_streak": 3, "otp_suspect": True}, [K.OTP_SUSPECT]),
    ("below the threshold no suspect", polls("185", "185"), {},
     {"mfa_streak": 2, "otp_suspect": False}, []),
    ("a success ends the streak and remembers it", polls("185", "185", "0"), {},
     {"mfa_streak": 0, "after_fix": True, "broken_since": None}, [K.LEFT, K.BACK_TO_OK]),
    ("MFA right after a fix is a relapse", polls("185", "0", "185"), {},
     {"relapsed": True, "otp_suspect": True, "mfa_streak": 1},
     [K.ENTERED, K.BECAME_FIXABLE, K.RELAPSED, K.OTP_SUSPECT]),
    ("a relapse stays one while MFA goes on", polls("185", "0", "185", "185"), {},
     {"relapsed": True, "otp_suspect": True, "mfa_streak": 2}, []),
    ("a success without a streak before is no fix", polls("910", "0", "185"), {},
     {"relapsed": False, "after_fix": False, "otp_suspect": False}, [K.ENTERED, K.BECAME_FIXABLE]),
    ("another failure resets the streak", polls("185", "185", "910", "185"), {},
     {"mfa_streak": 1, "otp_suspect": False}, [K.LEFT, K.ENTERED, K.BECAME_FIXABLE]),
    ("back to ok after an outage", polls("910", "0"), {},
     {"broken_since": None, "category": "ok"}, [K.LEFT, K.BACK_TO_OK]),
    ("a code change within a category keeps broken-since, no events", polls("910", "905"), {},
     {"broken_since": NOW, "code": "905"}, []),
    ("a change to a fixable category", polls("910", "103"), {},
     {"broken_since": NOW, "fixable": True}, [K.LEFT, K.ENTERED, K.BECAME_FIXABLE]),
    ("a fixable account seen again unchanged: steady only", polls("103", "103"),
     {"steady": True}, {}, [K.STILL_BROKEN]),
    ("... and nothing for other subscribers", polls("103", "103"), {}, {}, []),
    ("a non-fixable one is never still_broken", polls("910", "910"), {"steady": True}, {}, []),
    ("an ok account is never still_broken", polls("0", "0"), {"steady": True}, {}, []),
    ("manual is not broken", polls("NONE"), {}, {"broken_since": None, "category": "manual"},
     [K.ENTERED]),
    ("no events built when nobody listens", polls("185", "0", "185"), {"emit": False},
     {"relapsed": True, "otp_suspect": True}, []),
    ("the threshold is a parameter", polls("185"), {"threshold": 1},
     {"otp_suspect": True}, [K.ENTERED, K.BECAME_FIXABLE, K.OTP_SUSPECT]),
    ("a missing success keeps the last one", [("0", 0, "auto"), ("185", 1, None)], {},
     {"success_ts": NOW, "attempt_ts": NOW + DAY}, [K.ENTERED, K.BECAME_FIXABLE]),
    ("an older attempt never replaces the newest", [("185", 2, "auto"), ("185", 1, "auto")],
     {}, {"attempt_ts": NOW + 2 * DAY, "mfa_streak": 1}, []),
    ("no settled attempt moves nothing", [("185", 0, "auto"), ("185", None, "auto")], {},
     {"attempt_ts": NOW, "mfa_streak": 1}, []),
    ("broken without an attempt dates from now", [("910", None, None)], {},
     {"broken_since": NOW}, [K.ENTERED]),
]


@pytest.mark.parametrize(("name", "seq", "options", "fields", "kinds"), CASES,
                         ids=[c[0] for c in CASES])
def test_transition_table(name, seq, options, fields, kinds):
    state, events = run(seq, **options)
    assert {f: getattr(state, f) for f in fields} == fields
    assert events == kinds


def test_events_carry_the_account_and_both_sides_of_the_change():
    first = AccountStatus("fin", "finicity", "a1", "4222", "FinBank", "910", NOW, None,
                          owner_id="cust-1", login_id="login-1")
    state, _ = transition(None, first, FACTS["910"], NOW, 3)
    again = AccountStatus("fin", "finicity", "a1", "4222", "FinBank", "103", NOW + DAY, None,
                          owner_id="cust-1", login_id="login-1")
    _state, events = transition(state, again, FACTS["103"], NOW + DAY, 3)
    entered = next(e for e in events if e.kind is K.ENTERED)
    assert (entered.source, entered.provider, entered.account_key, entered.owner_id,
            entered.login_id, entered.institution_id, entered.institution) == (
        "fin", "finicity", "a1", "cust-1", "login-1", "4222", "FinBank")
    assert (entered.code, entered.category, entered.fixable, entered.previous_code,
            entered.previous_category, entered.broken_since, entered.at) == (
        "103", "credentials", True, "910", "institution", NOW, NOW + DAY)


def test_back_to_ok_carries_when_the_episode_began():
    broken = AccountStatus("fin", "finicity", "a1", "4222", "FinBank", "910", NOW, None)
    state, _ = transition(None, broken, FACTS["910"], NOW, 3)
    fixed = AccountStatus("fin", "finicity", "a1", "4222", "FinBank", "0", NOW + DAY, NOW + DAY)
    state, events = transition(state, fixed, FACTS["0"], NOW + DAY, 3)
    assert state.broken_since is None
    assert {e.kind: e.broken_since for e in events} == {K.LEFT: NOW, K.BACK_TO_OK: NOW}


@pytest.mark.parametrize("code", ["0", "103", "185", "910", "NONE"])
def test_a_re_poll_returns_the_previous_state_itself(code):
    """Nothing moved: the very same object comes back (the session skips it by identity),
    and it equals what the full rule computes."""
    record = AccountStatus("fin", "finicity", "a1", "4222", "FinBank", code, NOW,
                           NOW if code == "0" else None)
    state, _ = transition(None, record, FACTS[code], NOW, 1)
    again, events = transition(state, record, FACTS[code], NOW + 60, 1)
    assert again is state and list(events) == []
    older = dataclasses.replace(record, attempt_ts=NOW - DAY, success_ts=None)
    assert transition(state, older, FACTS[code], NOW + 60, 1)[0] is state
    moved = dataclasses.replace(record, institution_id="4223")
    assert transition(state, moved, FACTS[code], NOW + 60, 1)[0] == state._replace(
        institution_id="4223")
