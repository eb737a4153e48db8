"""The rule's other outputs: the account's contribution to the aggregates, REMOVED events."""

from __future__ import annotations

from exporter.records import AccountStatus
from exporter.tracker import ChunkDelta, CodeFacts, EventKind, FleetState, transition
from exporter.tracker.transition import OTP, removed

NOW = 1_763_700_000.0
DAY = 86400.0
OK = CodeFacts("0", "ok", False, False, True, True)
MFA = CodeFacts("185", "mfa", True, True, False, False)


def record(code: str, night: int, *, inst: str = "4222", consent: float | None = None):
    attempt = NOW + night * DAY
    return AccountStatus("fin", "finicity", "a1", inst, "FinBank", code, attempt,
                         attempt if code == "0" else None, consent_end=consent)


def test_a_first_sighting_counts_everything_it_contributes():
    delta = ChunkDelta()
    transition(None, record("185", 0, consent=NOW + 40 * DAY), MFA, NOW, 1, delta=delta)
    assert delta.accounts == [("4222", "185", "mfa", True)]
    assert delta.otp == ["4222"]
    assert delta.broken == [("mfa", NOW // 60)]
    assert delta.consent == [("4222", (NOW + 40 * DAY) // DAY)]
    assert (delta.never, delta.success) == (1, [])


def test_a_change_moves_old_keys_out_and_new_ones_in():
    state, _ = transition(None, record("185", 0), MFA, NOW, 1)
    delta = ChunkDelta()
    transition(state, record("0", 1, inst="4223"), OK, NOW + DAY, 1, delta=delta)
    assert delta.gone_accounts == [("4222", "185", "mfa", True)]
    assert delta.accounts == [("4223", "0", "ok", False)]
    assert delta.moved == [("4223", "mfa", "ok")]
    assert (delta.gone_otp, delta.otp) == (["4222"], [])
    assert (delta.gone_broken, delta.broken) == ([("mfa", NOW // 60)], [])
    assert (delta.never, delta.success) == (-1, [(NOW + DAY) // 60])
    fleet = FleetState()
    fleet.apply(delta)
    assert fleet.accounts[("4223", "0", "ok", False)] == 1


def test_a_re_poll_contributes_nothing():
    state, _ = transition(None, record("185", 0), MFA, NOW, 1)
    delta = ChunkDelta()
    again, _ = transition(state, record("185", 0), MFA, NOW + 60, 1, delta=delta)
    assert again is state
    assert not (delta.accounts or delta.gone_accounts or delta.success or delta.never)


def test_removed_events_come_from_the_stored_rows():
    rows = [("a1", "4222", "185", NOW, OTP)]
    [event] = removed("fin", "finicity", rows, {"4222": "FinBank"},
                      lambda code: ("mfa", True), NOW + DAY)
    assert (event.kind, event.account_key, event.institution, event.code, event.category,
            event.fixable, event.otp_suspect, event.broken_since, event.owner_id, event.at) == (
        EventKind.REMOVED, "a1", "FinBank", "185", "mfa", True, True, NOW, None, NOW + DAY)
