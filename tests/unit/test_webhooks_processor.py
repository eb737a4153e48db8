"""The inbox and the push processor: coalescing, done only after applying, retries, windows."""

from __future__ import annotations

import asyncio

import pytest

from exporter.sources.notices import Delivery
from exporter.state.database import StateDatabase
from exporter.upstreams.finicity.webhooks import FINICITY_KEEP
from exporter.upstreams.mx.webhooks import MX_KEEP
from exporter.webhooks.inbox import WebhookInbox
from exporter.webhooks.processor import PushProcessor
from tests.unit.test_webhooks_support import (
    FakeSource,
    FakeTracker,
    RecordingObserver,
)

SRC = "finicity-prod"


def event(key: str, owner: str = "1001", keep: float = FINICITY_KEEP) -> Delivery:
    return Delivery("unableToConnect", (owner,), f"e:{key}", keep)


async def processor(inbox, clock, source=None, tracker=None, **kw):
    """A processor that has loaded what the inbox holds pending."""
    source = source or FakeSource()
    p = PushProcessor(inbox, {source.name: source}, tracker or FakeTracker(),
                      RecordingObserver(), clock=clock, **kw)
    await p.load()
    return p


async def test_events_of_one_owner_are_coalesced_into_one_reread(inbox, clock):
    for i in range(5):
        await inbox.put(SRC, event(f"a{i}"), clock())
    await inbox.put(SRC, event("b", owner="2002"), clock())
    clock.advance(1.5)
    p = await processor(inbox, clock)
    await p.drain()
    assert sorted(p.sources[SRC].calls) == ["1001", "2002"]
    # the two re-reads finished together: one apply (one transaction, one snapshot)
    assert [(s, pr, sorted(r.owner_id for r in recs)) for s, pr, recs in p.tracker.applied] \
        == [(SRC, "finicity", ["1001", "2002"])]
    assert await inbox.counts() == (0, 6)
    assert p.observer.refreshes == [(SRC, 1.5)] * 6


async def test_rows_stay_pending_when_applying_fails_and_are_retried_with_backoff(inbox, clock):
    await inbox.put(SRC, event("a"), clock())
    tracker = FakeTracker()
    tracker.fail_next = 1
    p = await processor(inbox, clock, tracker=tracker, backoff=10.0)
    await p.drain()
    assert await inbox.counts() == (1, 0)
    assert tracker.applied == []
    assert p.dispatch() == 0  # not before its backoff
    clock.advance(10.0)
    await p.drain()
    assert await inbox.counts() == (0, 1)
    assert len(tracker.applied) == 1


def owners_applied(tracker: FakeTracker) -> list[list[str]]:
    return [sorted(r.owner_id for r in records) for _s, _p, records in tracker.applied]


async def wait_until(check) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_rereads_finishing_during_an_apply_are_applied_together_next(inbox, clock):
    tracker = FakeTracker()
    tracker.gate = asyncio.Event()
    await inbox.put(SRC, event("a", owner="1"), clock())
    p = await processor(inbox, clock, tracker=tracker, concurrency=8)
    assert p.dispatch() == 1
    await wait_until(lambda: tracker.applying == 1)  # owner 1's apply holds the tracker
    for owner in ("2", "3", "4"):
        p.add(await inbox.put(SRC, event(f"e{owner}", owner=owner), clock()))
    assert p.dispatch() == 3
    await wait_until(lambda: len(p.sources[SRC].calls) == 4)
    await asyncio.sleep(0)
    assert await inbox.counts() == (4, 0)  # nothing is done before it is applied
    tracker.gate.set()
    await p.drain()
    assert owners_applied(tracker) == [["1"], ["2", "3", "4"]]
    assert await inbox.counts() == (0, 4)
    assert len(p.observer.refreshes) == 4


async def test_a_failed_group_apply_leaves_each_of_its_owners_pending_for_a_retry(inbox, clock):
    for owner in ("1", "2", "3"):
        await inbox.put(SRC, event(f"e{owner}", owner=owner), clock())
    tracker = FakeTracker()
    tracker.fail_next = 1
    p = await processor(inbox, clock, tracker=tracker, backoff=10.0)
    await p.drain()
    assert await inbox.counts() == (3, 0)
    assert p.observer.failures == {(SRC, "retried"): 3}
    clock.advance(10.0)
    await p.drain()
    assert await inbox.counts() == (0, 3)
    assert sorted(o for batch in owners_applied(tracker) for o in batch) == ["1", "2", "3"]


async def test_stop_during_an_apply_leaves_its_rows_pending(inbox, clock):
    tracker = FakeTracker()
    tracker.gate = asyncio.Event()
    p = await processor(inbox, clock, tracker=tracker)
    await p.start()
    try:
        p.add(await inbox.put(SRC, event("a"), clock()))
        for _ in range(200):
            if tracker.applying:
                break
            await asyncio.sleep(0.01)
        assert tracker.applying == 1
    finally:
        await p.stop()
    assert await inbox.counts() == (1, 0)
    assert tracker.applied == []


async def test_failed_reread_is_given_up_after_the_limit(inbox, clock):
    await inbox.put(SRC, event("a"), clock())
    source = FakeSource()
    source.fail_next = 100
    p = await processor(inbox, clock, source=source, backoff=60.0, backoff_max=60.0,
                  give_up_after=600.0)
    for _ in range(20):
        await p.drain()
        clock.advance(60.0)
    assert await inbox.counts() == (0, 1)
    assert 8 <= len(source.calls) <= 12
    assert p.tracker.applied == []


async def test_owner_of_another_shard_at_processing_time_is_marked_done_unread(inbox, clock):
    await inbox.put(SRC, event("a", owner="9"), clock())
    p = await processor(inbox, clock, source=FakeSource(owned={"1001"}))
    await p.drain()
    assert p.sources[SRC].calls == []
    assert await inbox.counts() == (0, 1)


async def test_rereads_run_at_most_concurrency_at_once(inbox, clock):
    for i in range(12):
        await inbox.put(SRC, event(f"k{i}", owner=str(1000 + i)), clock())
    source = FakeSource()
    source.gate = asyncio.Event()
    p = await processor(inbox, clock, source=source, concurrency=3)
    assert p.dispatch() == 3
    while source.in_flight < 3:
        await asyncio.sleep(0)
    assert p.dispatch() == 0
    assert len(source.calls) == 3
    source.gate.set()
    await p.drain()
    assert source.max_in_flight == 3
    assert len(source.calls) == 12
    assert await inbox.counts() == (0, 12)


async def test_an_event_arriving_during_a_reread_gets_a_fresh_one(inbox, clock):
    await inbox.put(SRC, event("a"), clock())
    source = FakeSource()
    source.gate = asyncio.Event()
    p = await processor(inbox, clock, source=source)
    p.dispatch()
    await asyncio.sleep(0)
    p.add(await inbox.put(SRC, event("b"), clock()))
    assert p.dispatch() == 0  # that owner is being re-read
    source.gate.set()
    await p.drain()
    assert source.calls == ["1001", "1001"]


async def test_started_processor_handles_events_when_woken_and_leaves_rest_on_stop(inbox, clock):
    source = FakeSource()
    p = await processor(inbox, clock, source=source)
    await p.start()
    try:
        p.add(await inbox.put(SRC, event("a"), clock()))
        for _ in range(200):
            if p.tracker.applied:
                break
            await asyncio.sleep(0.01)
        assert len(p.tracker.applied) == 1
        source.gate = asyncio.Event()
        p.add(await inbox.put(SRC, event("b"), clock()))
        for _ in range(200):
            if len(source.calls) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await p.stop()
    assert await inbox.counts() == (1, 1)  # the cancelled re-read stays pending


async def test_dedupe_keys_expire_after_their_window(inbox, clock):
    assert await inbox.put(SRC, event("a"), clock())
    assert await inbox.put("mx-prod", event("m", keep=MX_KEEP), clock())
    p = await processor(inbox, clock, prune_every=60.0)
    p.sources["mx-prod"] = FakeSource("mx-prod", "mx")
    await p.drain()
    clock.advance(MX_KEEP + 1)
    assert await inbox.prune(clock()) == 1
    assert await inbox.put(SRC, event("a"), clock()) == []
    assert await inbox.put("mx-prod", event("m", keep=MX_KEEP), clock())
    clock.advance(FINICITY_KEEP)
    await inbox.prune(clock())
    assert await inbox.put(SRC, event("a"), clock())


async def test_pending_rows_are_never_pruned(inbox, clock):
    await inbox.put(SRC, event("a"), clock())
    clock.advance(30 * FINICITY_KEEP)
    assert await inbox.prune(clock()) == 0
    assert await inbox.counts() == (1, 0)


async def test_inbox_on_a_file_that_is_not_a_database_raises_a_clear_error(tmp_path):
    from exporter.webhooks.inbox import InboxError

    path = tmp_path / "state.db"
    path.write_bytes(b"this is not sqlite" * 100)
    box = WebhookInbox(StateDatabase(path))
    with pytest.raises(InboxError, match=r"state\.db"):
        await box.open()
    await box.close()
