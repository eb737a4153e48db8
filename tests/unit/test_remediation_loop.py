"""The repair loop over its SQLite tables: episodes from events, requests when due, outcomes."""

from __future__ import annotations

import json

import pytest

from tests.unit.test_remediation_support import (
    DAY,
    HOUR,
    T0,
    Receiver,
    Recorder,
    broke,
    build_loop,
    ev,
    feed,
    finished,
    healed,
    snapshot,
)


@pytest.fixture
def obs():
    return Recorder()


@pytest.fixture
async def rig(tmp_path, clock, obs):
    receiver = Receiver()
    loop = build_loop(tmp_path, clock, receiver, observer=obs)
    await finished(loop, "fin", True)  # past the backlog
    await finished(loop, "mxs", True)
    loop.receiver = receiver
    yield loop
    await loop.stop()


async def cycle(loop):
    """Evaluate, then deliver what is due; returns the bodies the receiver got this cycle."""
    before = len(loop.receiver.seen)
    await loop.evaluate()
    await loop.worker.run_once()
    return [json.loads(r.content) for r in loop.receiver.seen[before:]]


def outbox(loop):
    return loop.store.outbox_states()


async def test_one_request_per_login_and_episode(rig):
    await feed(rig, broke("103") + broke("103", key="a2"))
    sent = await cycle(rig)
    await feed(rig, [ev("still_broken", "103"), ev("still_broken", "103", key="a2")])
    await feed(rig, [ev("entered", "185", previous="103")])
    sent += await cycle(rig)
    assert len(sent) == 1
    assert sent[0]["account_ids"] == ["a1", "a2"] and sent[0]["code"] == "103"


async def test_no_request_for_a_code_that_is_not_fixable(rig):
    await feed(rig, [ev("entered", "901"), ev("entered", "102", key="a2", login="l2")])
    assert await cycle(rig) == []
    assert outbox(rig) == {}


async def test_a_login_closed_before_its_request_went_out_gets_none(rig, clock):
    rig.cfg = rig.cfg.model_copy(update={"min_broken_for": HOUR})
    await feed(rig, broke("103"))
    await feed(rig, [ev("entered", "913", previous="103")])
    clock.advance(2 * HOUR)
    assert await cycle(rig) == []


async def test_a_pending_request_is_cancelled_when_the_login_is_fixed(rig):
    rig.receiver.answers = [503]
    await feed(rig, broke("103"))
    await cycle(rig)  # attempt fails, retry scheduled
    await feed(rig, healed())
    assert outbox(rig) == {"cancelled": 1}


async def test_no_request_while_the_institution_is_in_outage_then_one_when_it_ends(rig):
    rig.test_snapshot["snap"] = snapshot({("fin", "4222"): {"institution": 30, "ok": 70}})
    await feed(rig, broke("103"))
    assert await cycle(rig) == []
    rig.test_snapshot["snap"] = snapshot({("fin", "4222"): {"institution": 5, "ok": 95}})
    assert len(await cycle(rig)) == 1


async def test_an_otp_suspect_gets_otp_each_refresh_and_no_link(tmp_path, clock):
    loop = build_loop(tmp_path, clock, receiver := Receiver(), link="generate")
    await finished(loop, "fin", True)
    await feed(loop, [*broke("185"), ev("otp_suspect", "185", otp=True)])
    await loop.evaluate()
    await loop.worker.run_once()
    body = json.loads(receiver.seen[0].content)
    assert body["kind"] == "otp_each_refresh" and "link" not in body and body["guidance"]
    await loop.stop()


async def test_the_kind_is_decided_when_the_request_is_created(rig):
    await feed(rig, broke("185"))
    sent = await cycle(rig)
    await feed(rig, [ev("otp_suspect", "185", otp=True)])
    sent += await cycle(rig)
    assert [b["kind"] for b in sent] == ["fix"]


async def test_logins_broken_before_the_first_complete_sweep_are_backlog(tmp_path, clock):
    loop = build_loop(tmp_path, clock, receiver := Receiver())
    await feed(loop, broke("103"))
    await finished(loop, "fin", False)  # a partial sweep does not end the baseline
    await feed(loop, broke("103", login="l2", key="a2"))
    await finished(loop, "fin", True)
    await feed(loop, broke("103", login="l3", key="a3"))
    await loop.evaluate()
    await loop.worker.run_once()
    assert [json.loads(r.content)["login_id"] for r in receiver.seen] == ["l3"]
    await loop.stop()


async def test_backfill_sends_the_backlog_paced_per_hour(tmp_path, clock):
    loop = build_loop(tmp_path, clock, receiver := Receiver(), backfill=True,
                      backfill_per_hour=2)
    for i in range(3):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await finished(loop, "fin", True)
    await loop.evaluate()
    await loop.worker.run_once()
    assert len(receiver.seen) == 2
    clock.advance(HOUR)
    await loop.evaluate()
    await loop.worker.run_once()
    assert len(receiver.seen) == 3
    await loop.stop()


async def test_min_broken_for_holds_the_request_until_the_login_stayed_broken(rig, clock):
    rig.cfg = rig.cfg.model_copy(update={"min_broken_for": 6 * HOUR})
    await feed(rig, broke("103", since=T0 - HOUR))
    assert await cycle(rig) == []
    clock.advance(5 * HOUR)
    assert len(await cycle(rig)) == 1


async def test_a_restart_neither_duplicates_nor_forgets(tmp_path, clock):
    receiver = Receiver()
    loop = build_loop(tmp_path, clock, receiver)
    await finished(loop, "fin", True)
    await feed(loop, broke("103") + broke("187", login="l2", key="a2"))
    await loop.evaluate()
    await loop.worker.run_once()
    await feed(loop, broke("108", login="l3", key="a3"))  # episode open, no request yet
    await loop.stop()

    again = build_loop(tmp_path, clock, receiver)
    await feed(again, [ev("still_broken", "103"), ev("still_broken", "187", login="l2", key="a2"),
                           ev("still_broken", "108", login="l3", key="a3")])
    await again.evaluate()
    await again.worker.run_once()
    await again.worker.run_once()
    logins = sorted(json.loads(r.content)["login_id"] for r in receiver.seen)
    assert logins == ["l1", "l2", "l3"]
    await again.stop()


async def test_a_fixed_login_counts_fixed_and_its_resolution_time(rig, clock, obs):
    await feed(rig, broke("103"))
    await cycle(rig)
    clock.advance(2 * DAY)
    await feed(rig, healed(at=clock.now))
    assert obs.outcomes == [("fin", "finicity", "fixed")]
    assert obs.resolutions == [("fin", "finicity", "credentials", 2 * DAY)]


async def test_breaking_again_within_seven_days_counts_rebroke_once(rig, clock, obs):
    await feed(rig, broke("185"))
    await cycle(rig)
    await feed(rig, healed())
    clock.advance(DAY)
    await feed(rig, broke("185", at=clock.now))
    await feed(rig, healed(at=clock.now))
    clock.advance(DAY)
    await feed(rig, broke("185", at=clock.now))
    assert [o[2] for o in obs.outcomes] == ["fixed", "rebroke"]
    sent = await cycle(rig)
    assert len(sent) == 1  # the new episode has its own request


async def test_breaking_again_after_seven_days_is_not_rebroke(rig, clock, obs):
    await feed(rig, broke("103"))
    await cycle(rig)
    await feed(rig, healed())
    clock.advance(8 * DAY)
    await feed(rig, broke("103", at=clock.now))
    assert [o[2] for o in obs.outcomes] == ["fixed"]


async def test_still_broken_after_retry_for_and_the_window_counts_abandoned_once(rig, clock, obs):
    await feed(rig, broke("103"))
    await cycle(rig)
    clock.advance(DAY + 7 * DAY - 1)
    await cycle(rig)
    assert obs.outcomes == []
    clock.advance(1)
    await cycle(rig)
    await cycle(rig)
    assert obs.outcomes == [("fin", "finicity", "abandoned")]
    await feed(rig, healed(at=clock.now))
    assert obs.outcomes == [("fin", "finicity", "abandoned")]


async def test_the_storm_guard_holds_requests_above_the_hourly_limit(tmp_path, clock, obs):
    receiver = Receiver()
    loop = build_loop(tmp_path, clock, receiver, observer=obs, storm_min=3, storm_share=0.05,
                      snap=snapshot({("fin", "4222"): {"credentials": 5, "ok": 15}}))
    await finished(loop, "fin", True)
    for i in range(5):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await loop.evaluate()
    await loop.worker.run_once()
    assert len(receiver.seen) == 3
    assert obs.results("held") == 2
    assert obs.held_now == {("fin", "4222", "FinBank"): 2}
    assert await loop.release("fin", "4222") == 2
    await loop.evaluate()
    await loop.worker.run_once()
    assert len(receiver.seen) == 5 and obs.held_now == {}
    await loop.stop()


async def test_after_a_release_the_guard_counts_afresh(tmp_path, clock):
    receiver = Receiver()
    loop = build_loop(tmp_path, clock, receiver, storm_min=2)
    await finished(loop, "fin", True)
    for i in range(3):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await loop.evaluate()
    clock.advance(60)
    await loop.release("fin", None)
    for i in range(3, 6):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await loop.evaluate()
    assert loop.store.outbox_states() == {"pending": 5, "held": 1}
    await loop.stop()


async def test_an_event_without_a_login_id_is_counted_not_fatal(rig, obs):
    await feed(rig, broke("103", login=None))
    assert obs.ignored_events == [("fin", "no_login_id"), ("fin", "no_login_id")]
    assert await cycle(rig) == []


async def test_pending_counts_requests_waiting_for_delivery(rig, obs):
    rig.receiver.answers = [500]
    await feed(rig, broke("103"))
    await cycle(rig)
    await rig.evaluate()
    assert obs.pending_now == {"fin": 1}


async def test_fixed_and_broken_again_in_one_batch_counts_both(rig, obs):
    await feed(rig, broke("103"))
    await cycle(rig)
    await feed(rig, [*healed(), *broke("103")])
    assert [o[2] for o in obs.outcomes] == ["fixed", "rebroke"]


async def test_closed_episodes_are_forgotten_after_the_rebroke_window(rig, clock):
    await feed(rig, broke("103"))
    await cycle(rig)
    await feed(rig, healed())
    clock.advance(9 * DAY)
    await rig.evaluate()
    assert rig.store.db.execute("SELECT count(*) FROM fix_episodes").fetchone() == (0,)
    assert outbox(rig) == {}


async def test_removed_upstream_closes_the_episode_through_the_account(rig):
    """REMOVED events carry no owner or login id: the loop finds the login by account."""
    await feed(rig, broke("103") + broke("103", key="a2"))
    await feed(rig, [ev("removed", "103", owner=None, login=None)])
    await feed(rig, [ev("removed", "103", key="a2", owner=None, login=None)])
    assert rig.store.db.execute(
        "SELECT close_reason FROM fix_episodes").fetchall() == [("gone",)]
    assert await cycle(rig) == []


async def test_removed_in_the_same_batch_as_the_breakage_closes_it(rig, obs):
    await feed(rig, [*broke("103"), ev("removed", "103", owner=None, login=None)])
    assert await cycle(rig) == [] and obs.ignored_events == []


async def test_the_sweep_does_not_wait_for_events_to_be_folded(rig):
    await rig.on_events(broke("103"))
    assert rig.store.db.execute("SELECT count(*) FROM fix_episodes").fetchone() == (0,)
    await rig.drained()
    assert rig.store.db.execute("SELECT count(*) FROM fix_episodes").fetchone() == (1,)
