"""Consent renewals in the repair loop: one request per login and consent period,
``renew_before`` ahead of the end, closed as ``renewed`` when a later end is seen, none
during an outage, through the storm guard."""

from __future__ import annotations

import json

import pytest

from exporter.remediation.renewals import RENEWAL_ID_BASE
from exporter.tracker.events import AccountEvent, EventKind
from tests.unit.test_remediation_support import (
    DAY,
    T0,
    Receiver,
    Recorder,
    build_loop,
    feed,
    finished,
    snapshot,
)


def consent(end: float | None, *, key: str = "a1", login: str = "l1", owner: str = "c1",
            inst: str = "4222", at: float = T0, code: str = "0") -> AccountEvent:
    """The CONSENT event the tracker emits for an account's consent end."""
    category = {"0": "ok", "947": "oauth"}[code]
    return AccountEvent(EventKind.CONSENT, "fin", "finicity", key, owner, login, inst, "FinBank",
                        code, category, code == "947", False, None, None, None, at,
                        consent_end=end)


@pytest.fixture
async def rig(tmp_path, clock):
    obs = Recorder()
    receiver = Receiver()
    loop = build_loop(tmp_path, clock, receiver, observer=obs, link="redirect",
                      public_url="https://fix.example.com")
    await finished(loop, "fin", True)
    loop.receiver, loop.obs = receiver, obs
    yield loop
    await loop.stop()


async def cycle(loop) -> list[dict]:
    before = len(loop.receiver.seen)
    await loop.evaluate()
    await loop.worker.run_once()
    return [json.loads(r.content) for r in loop.receiver.seen[before:]]


def renewals(obs: Recorder, result: str = "delivered") -> int:
    return sum(1 for r in obs.requests if r[2] == "consent_renewal" and r[3] == result)


async def test_one_renewal_per_login_and_consent_period_with_its_end_and_a_link(rig, clock):
    end = clock.now + 10 * DAY
    await feed(rig, [consent(end), consent(end, key="a2")])
    sent = await cycle(rig)
    await feed(rig, [consent(end), consent(end, key="a2")])  # re-announced every sweep
    clock.advance(DAY)
    sent += await cycle(rig)
    assert len(sent) == 1
    body = sent[0]
    assert body["kind"] == "consent_renewal" and body["login_id"] == "l1"
    assert body["customer_id"] == "c1" and body["account_ids"] == ["a1", "a2"]
    assert body["authorization_end"] == "2025-12-01T04:40:00Z"
    assert body["broken_since"] is None
    assert body["link"].startswith("https://fix.example.com/fix/")
    assert renewals(rig.obs) == 1


async def test_no_renewal_before_renew_before_and_none_when_it_is_off(tmp_path, clock, rig):
    await feed(rig, [consent(clock.now + 30 * DAY)])
    assert await cycle(rig) == []
    clock.advance(16 * DAY + 1)  # 14 days before the end, minus a second
    assert len(await cycle(rig)) == 1

    (tmp_path / "off").mkdir()
    off = build_loop(tmp_path / "off", clock, receiver := Receiver(), renew_before="0s")
    await finished(off, "fin", True)
    await feed(off, [consent(clock.now + DAY)])
    await off.evaluate()
    await off.worker.run_once()
    assert receiver.seen == [] and off.store.outbox_states() == {}
    await off.stop()


async def test_a_later_end_closes_the_period_as_renewed_and_the_next_period_gets_its_own(rig, clock):
    end = clock.now + 10 * DAY
    await feed(rig, [consent(end), consent(end, key="a2")])
    assert len(await cycle(rig)) == 1
    later = end + 90 * DAY
    await feed(rig, [consent(later)])  # one account of the login renewed: not yet
    assert rig.obs.outcomes == []
    await feed(rig, [consent(later, key="a2")])
    assert rig.obs.outcomes == [("fin", "finicity", "renewed")]
    assert await cycle(rig) == []  # the new period is not due yet
    clock.advance(later - clock.now - 13 * DAY)
    sent = await cycle(rig)
    assert len(sent) == 1 and sent[0]["authorization_end"] == "2026-03-01T04:40:00Z"
    assert renewals(rig.obs) == 2 and rig.obs.outcomes == [("fin", "finicity", "renewed")]


async def test_a_renewal_before_delivery_cancels_the_request_and_counts_no_outcome(rig, clock):
    rig.receiver.answers = [503]
    end = clock.now + 5 * DAY
    await feed(rig, [consent(end)])
    await cycle(rig)  # fails, a retry is scheduled
    await feed(rig, [consent(end + 90 * DAY)])
    assert rig.store.outbox_states() == {"cancelled": 1}
    assert rig.obs.outcomes == []


async def test_no_renewal_while_the_institution_is_in_an_outage_then_one_after(rig, clock):
    rig.test_snapshot["snap"] = snapshot({("fin", "4222"): {"institution": 30, "ok": 70}})
    await feed(rig, [consent(clock.now + 5 * DAY)])
    assert await cycle(rig) == []
    rig.test_snapshot["snap"] = snapshot({("fin", "4222"): {"institution": 5, "ok": 95}})
    assert len(await cycle(rig)) == 1


async def test_the_storm_guard_holds_renewals_beyond_its_limit(tmp_path, clock):
    obs = Recorder()
    loop = build_loop(tmp_path, clock, receiver := Receiver(), observer=obs, storm_min=2)
    await finished(loop, "fin", True)
    await feed(loop, [consent(clock.now + 5 * DAY, key=f"a{i}", login=f"l{i}", owner=f"c{i}")
                      for i in range(5)])
    await loop.evaluate()
    await loop.worker.run_once()
    assert len(receiver.seen) == 2
    assert renewals(obs, "held") == 3
    assert loop.store.held_counts() == {("fin", "4222", "FinBank"): 3}
    await loop.stop()


async def test_a_period_that_ended_unrenewed_gets_no_renewal_and_its_token_names_the_login(rig, clock):
    await feed(rig, [consent(clock.now + DAY)])
    [period] = rig.store.open_periods([("fin", "c1", "l1")]).values()
    ep = rig.store.episode(RENEWAL_ID_BASE + period.id)
    assert (ep.source, ep.owner_id, ep.login_id, ep.closed_at) == ("fin", "c1", "l1", None)
    rig.test_snapshot["snap"] = snapshot({("fin", "4222"): {"institution": 30, "ok": 70}})
    await cycle(rig)
    clock.advance(2 * DAY)
    rig.test_snapshot["snap"] = snapshot({("fin", "4222"): {"ok": 100}})
    assert await cycle(rig) == []  # too late: the login breaks with 947 and gets a fix request
    assert rig.store.episode(RENEWAL_ID_BASE + period.id).closed_at is not None


async def test_a_renewal_survives_a_restart_of_the_loop(tmp_path, clock):
    loop = build_loop(tmp_path, clock, Receiver())
    await finished(loop, "fin", True)
    await feed(loop, [consent(clock.now + 5 * DAY)])
    await loop.evaluate()
    await loop.stop()
    again = build_loop(tmp_path, clock, receiver := Receiver())
    await feed(again, [consent(clock.now + 5 * DAY)])
    await again.evaluate()
    await again.worker.run_once()
    assert len(receiver.seen) == 1
    await again.stop()
