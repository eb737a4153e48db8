"""The episode rules as a table: one login, a sequence of account events, what follows."""

from __future__ import annotations

import pytest

from exporter.remediation.episodes import (
    KIND_FIX,
    KIND_OTP,
    Episode,
    apply_event,
    fleet_facts,
    rebroke,
    request_body,
    request_decision,
    request_kind,
    storm_limit,
)
from tests.unit.test_remediation_support import DAY, T0, broke, ev, healed, snapshot


def fold(events, ep: Episode | None = None, backlog: bool = False):
    whats = []
    for e in events:
        ep, what = apply_event(ep, e, backlog=backlog)
        whats.append(what)
    return ep, [w for w in whats if w != "none"]


CASES = {
    "enter fixable opens": (broke("103"), "open", ["opened"]),
    "enter non-fixable opens nothing": ([ev("entered", "901")], None, []),
    "flap between two fixable codes stays one episode": (
        [*broke("103"), ev("left", "185", previous="103"), ev("entered", "185", previous="103"), ev("entered", "103", previous="185")], "open", ["opened", "updated", "updated"]),
    "go to outage keeps the episode open but not fixable": (
        [*broke("103"), ev("entered", "901", previous="103")], "open-unfixable",
        ["opened", "updated"]),
    "back at ok closes fixed": (broke("103") + healed(), "fixed", ["opened", "closed"]),
    "account closed at the bank closes gone": (
        [*broke("103"), ev("entered", "913", previous="103")], "gone", ["opened", "closed"]),
    "removed upstream closes gone": (
        [*broke("103"), ev("removed", "103")], "gone", ["opened", "closed"]),
    "still broken on an open episode changes nothing": (
        [*broke("103"), ev("still_broken", "103")], "open", ["opened"]),
    "still broken without an episode opens one (missed events)": (
        [ev("still_broken", "103")], "open", ["opened"]),
    "a second account of the login joins, the login heals when both do": (
        broke("103") + broke("103", key="a2") + healed(), "open", ["opened", "updated", "updated"]),
    "one account healed and one closed: fixed": (
        broke("103") + broke("103", key="a2") + healed() + [ev("entered", "913", key="a2")],
        "fixed", ["opened", "updated", "updated", "closed"]),
    "back to ok for an unknown account is nothing": (healed(), None, []),
}


@pytest.mark.parametrize("events,state,whats", CASES.values(), ids=CASES.keys())
def test_episode_rule_table(events, state, whats):
    ep, seen = fold(events)
    assert seen == whats
    if state is None:
        assert ep is None
    elif state == "open":
        assert ep.closed_at is None and ep.fixable_now
    elif state == "open-unfixable":
        assert ep.closed_at is None and not ep.fixable_now
    else:
        assert ep.closed_at is not None and ep.close_reason == state


def test_an_episode_is_keyed_by_login_and_carries_its_broken_accounts():
    ep, _ = fold(broke("103", key="a1") + broke("185", key="a2"))
    assert ep.login == ("fin", "c1", "l1")
    assert sorted(ep.accounts) == ["a1", "a2"]
    assert (ep.code, ep.category) == ("185", "mfa")


def test_broken_since_is_the_earliest_of_the_logins_accounts():
    ep, _ = fold(broke("103", since=T0 - 5 * DAY) + broke("103", key="a2", since=T0 - 9 * DAY))
    assert ep.broken_since == T0 - 9 * DAY


def test_an_otp_suspect_gets_otp_each_refresh_with_guidance():
    ep, _ = fold([*broke("185"), ev("otp_suspect", "185", otp=True)])
    assert request_kind(ep) == KIND_OTP
    body = request_body(ep, "r1", KIND_OTP)
    assert "185" in body["guidance"] and "931" in body["guidance"]
    assert request_kind(fold(broke("185"))[0]) == KIND_FIX


def _decide(ep, now=T0, **kw):
    args = dict(min_broken_for=0.0, backfill=False, in_outage=False, backfill_left=10)
    args.update(kw)
    return request_decision(ep, now, **args)


def test_a_fresh_fixable_episode_is_due_at_once():
    assert _decide(fold(broke("103"))[0]) == "create"


def test_min_broken_for_waits_for_the_login_to_stay_broken():
    ep = fold(broke("103", since=T0))[0]
    assert _decide(ep, T0 + 3599, min_broken_for=3600) == "wait"
    assert _decide(ep, T0 + 3600, min_broken_for=3600) == "create"


def test_an_institution_in_outage_waits_and_is_due_when_it_ends():
    ep = fold(broke("103"))[0]
    assert _decide(ep, in_outage=True) == "wait"
    assert _decide(ep, in_outage=False) == "create"


def test_backlog_gets_nothing_without_backfill_and_is_paced_with_it():
    ep = fold(broke("103"), backlog=True)[0]
    assert _decide(ep) == "never"
    assert _decide(ep, backfill=True, backfill_left=1) == "create"
    assert _decide(ep, backfill=True, backfill_left=0) == "wait"


def test_an_episode_with_a_request_or_closed_is_never_due_again():
    ep = fold(broke("103"))[0]
    ep.request_id = "r1"
    assert _decide(ep) == "never"
    closed = fold(broke("103") + healed())[0]
    assert _decide(closed) == "never"


def test_an_episode_gone_unfixable_waits():
    ep = fold([*broke("103"), ev("entered", "901", previous="103")])[0]
    assert _decide(ep) == "wait"


def test_rebroke_counts_within_seven_days_only():
    assert rebroke(T0, T0 + 7 * DAY)
    assert not rebroke(T0, T0 + 7 * DAY + 1)
    assert not rebroke(None, T0)


def test_storm_limit_is_the_larger_of_the_floor_and_the_share():
    assert storm_limit(100, 50, 0.05) == 50
    assert storm_limit(10_000, 50, 0.05) == 500
    assert storm_limit(10_001, 50, 0.05) == 501


def test_outage_is_the_alert_rule_share_and_count():
    facts = fleet_facts(snapshot({
        ("fin", "down"): {"institution": 10, "ok": 40},   # 20 %, 10 accounts: outage
        ("fin", "few"): {"institution": 9, "ok": 1},      # 90 % but 9 accounts: no
        ("fin", "big"): {"institution": 19, "ok": 81},    # 19 %: no
    }))
    assert facts.outages == {("fin", "down")}
    assert facts.accounts[("fin", "big")] == 100


def test_body_fields_and_types_follow_the_contract():
    ep = fold(broke("103", key="a2") + broke("103", key="a1"))[0]
    body = request_body(ep, "r1", KIND_FIX)
    assert body == {
        "id": "r1", "kind": "fix", "source": "fin", "provider": "finicity",
        "institution_id": "4222", "institution": "FinBank", "code": "103",
        "category": "credentials", "customer_id": "c1", "login_id": "l1",
        "account_ids": ["a1", "a2"], "broken_since": "2025-11-21T04:40:00Z"}


def test_an_mx_body_names_the_user_and_no_account_ids():
    ep = fold(broke("DENIED", provider="mx", owner="USR-1", login="MBR-1", key="MBR-1"))[0]
    body = request_body(ep, "r1", KIND_FIX)
    assert body["user_guid"] == "USR-1" and body["login_id"] == "MBR-1"
    assert body["account_ids"] == [] and "customer_id" not in body
