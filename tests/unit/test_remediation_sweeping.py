"""No request is created from a source's sweep before that sweep's snapshot is published:
the outage facts come from the snapshot, the episodes from the events of each chunk, so an
institution whose outage this sweep reveals would otherwise get requests."""

from __future__ import annotations

import json

from tests.unit.test_remediation_support import Clock, Receiver, broke, build_loop, feed, snapshot


async def _cycle(loop, receiver):
    before = len(receiver.seen)
    await loop.evaluate()
    await loop.worker.run_once()
    return [json.loads(r.content) for r in receiver.seen[before:]]


async def _past_backlog(tmp_path, receiver):
    """A loop after one complete, published sweep of each source (past the backlog)."""
    loop = build_loop(tmp_path, Clock(), receiver)
    for source in ("fin", "mxs"):
        loop.sweep_started(source)
        loop.sweep_finished(source, True)
    await loop.drained()
    return loop


async def test_requests_wait_for_the_sweeps_snapshot_then_respect_its_outage(tmp_path):
    receiver = Receiver()
    loop = await _past_backlog(tmp_path, receiver)
    try:

        # Sweep 2 of "fin": its chunks open episodes at two institutions; the published
        # snapshot is still sweep 1's, with no outage anywhere.
        loop.sweep_started("fin")
        await feed(loop, broke("103", key="a1", login="l1", inst="4222")
                   + broke("103", key="b1", owner="c2", login="l2", inst="5555"))
        assert await _cycle(loop, receiver) == [], "nothing while the sweep runs"

        # The sweep publishes: 4222 is in an outage, 5555 is not.
        loop.test_snapshot["snap"] = snapshot({("fin", "4222"): {"institution": 40, "ok": 60},
                                               ("fin", "5555"): {"ok": 100}})
        loop.sweep_finished("fin", True)
        sent = await _cycle(loop, receiver)
        assert [b["institution_id"] for b in sent] == ["5555"]
    finally:
        await loop.stop()


async def test_a_sweep_that_publishes_during_an_evaluation_waits_for_the_next(tmp_path):
    receiver = Receiver()
    loop = await _past_backlog(tmp_path, receiver)
    published = loop.snapshot
    try:
        loop.sweep_started("fin")
        await feed(loop, broke("103"))

        def the_sweep_publishes_meanwhile():
            # The facts are taken, then the sweep publishes before the evaluation reaches
            # its episodes: the facts predate what it changed.
            facts = published()
            loop.sweep_finished("fin", True)
            return facts
        loop.snapshot = the_sweep_publishes_meanwhile
        assert await _cycle(loop, receiver) == []
        loop.snapshot = published
        assert len(await _cycle(loop, receiver)) == 1, "the next evaluation creates it"
    finally:
        await loop.stop()


async def test_a_published_sweeps_requests_go_while_the_next_sweep_runs(tmp_path):
    """Sweeps back to back (a sweep longer than its interval) must not starve the loop:
    what a published sweep changed is evaluated while the next one runs; only what the
    running sweep changes waits for its snapshot."""
    receiver = Receiver()
    loop = await _past_backlog(tmp_path, receiver)
    try:
        loop.sweep_started("fin")
        await feed(loop, broke("103", key="a1", login="l1"))
        loop.sweep_finished("fin", True)
        loop.sweep_started("fin")  # the next sweep begins at once
        await feed(loop, broke("103", key="b1", owner="c2", login="l2"))
        assert [b["login_id"] for b in await _cycle(loop, receiver)] == ["l1"]
        loop.sweep_finished("fin", True)
        assert [b["login_id"] for b in await _cycle(loop, receiver)] == ["l2"]
    finally:
        await loop.stop()


async def test_a_failed_sweep_leaves_its_source_unsettled_until_one_publishes(tmp_path):
    receiver = Receiver()
    loop = await _past_backlog(tmp_path, receiver)
    try:
        loop.sweep_started("fin")
        await feed(loop, broke("103"))
        loop.sweep_finished("fin", False, published=False)  # failed: not in the snapshot
        assert await _cycle(loop, receiver) == []
        loop.sweep_started("fin")
        loop.sweep_finished("fin", True)
        assert len(await _cycle(loop, receiver)) == 1
    finally:
        await loop.stop()


async def test_events_after_stop_are_dropped_not_folded(tmp_path):
    """At shutdown the loop may still be sent a chunk's events: they are dropped (the next
    sweep re-announces them), never folded on a closed store nor waited for."""
    loop = await _past_backlog(tmp_path, Receiver())
    await loop.stop()
    await loop.on_events(broke("103"))
    assert loop._consuming is None
    assert loop._queue.qsize() == 0
