"""The one owner of the state database: every feature writes on its one writer thread, the
big reads run on its reader, a file written by main before it opens with its data, and no SQL
lives outside ``exporter/state``."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
from pathlib import Path

from exporter.health.history import HistoryStore, InstitutionHistory, Point
from exporter.health.lag import AgeCounts, InstitutionAges, read_age_counts
from exporter.health.sides import DEFAULT_THRESHOLDS
from exporter.remediation.loop import RepairLoop
from exporter.routing.advice import Track
from exporter.routing.store import Kept, RoutingStore
from exporter.sources.base import SweepReport
from exporter.sources.notices import Delivery
from exporter.state.accounts import SCHEMA_VERSION, StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import Tracker
from exporter.webhooks.inbox import WebhookInbox
from tests.unit.test_remediation_support import config

ROOT = Path(__file__).resolve().parents[2]
MAIN_FILE = ROOT / "tests" / "fixtures" / "state-main-8ddde7e.sql"
NOW = 1_763_700_000.0  # the fixture's clock (and conftest's T0)


def _threads_of(conn: sqlite3.Connection, seen: set[str]) -> None:
    conn.set_trace_callback(lambda _sql: seen.add(threading.current_thread().name))


async def test_every_feature_writes_on_the_one_writer_thread_and_scans_on_the_reader(
        tmp_path, clock, acct):
    db = StateDatabase(tmp_path / "state.db")
    tracker = Tracker(StateStore(db), clock=clock)
    writers: set[str] = set()
    db.write_sync(lambda: _threads_of(db.connection, writers))
    loop = RepairLoop(config(), db, sources={}, snapshot=lambda: tracker.snapshot, clock=clock)
    try:
        session = await tracker.begin("fin", "finicity")
        await session.add([acct("a1", 0), acct("a2", 103)])
        await session.finish(SweepReport(complete=True))
        inbox = WebhookInbox(db)
        await inbox.open()
        [row] = await inbox.put("fin", Delivery("unableToConnect", ("c1",), "dk-1", 60.0),
                                clock())
        await inbox.mark_done([row.id], clock())
        await loop.call("mark_baseline", "fin", clock())
        history = InstitutionHistory(HistoryStore(db), lambda: None, clock)
        await db.write(history.store.record, {("chase.com", "finicity"): Point(
            clock() // 900 * 900, 40, 1.0, 0.0, 0.0, "healthy")}, clock())
        routing = RoutingStore(db)
        await db.write(routing.save, {"chase.com": Kept({}, {"finicity": 100}, clock())}, [])

        readers: set[str] = set()
        db.read_sync(lambda: _threads_of(db.reader, readers))
        ages = InstitutionAges(db, DEFAULT_THRESHOLDS, clock)
        assert await ages.run()
        assert ages.counts("fin")["4222"].total == 2
        assert list(await history.read(3600)) == [("chase.com", "finicity")]
    finally:
        await loop.stop()
        await tracker.close()
    assert writers == {"state-writer_0"}, "tracker, inbox, repair loop, history, routing"
    assert readers == {"state-reader_0"}, "the lag counts and the history read"
    assert not [t.name for t in threading.enumerate()
                if t.name.startswith(("webhook-inbox", "remediation_"))], "no executor of its own"


async def test_a_unit_that_leaves_its_transaction_open_does_not_hold_the_others(tmp_path):
    db = StateDatabase(tmp_path / "state.db")
    await db.write(lambda: db.connection.execute("BEGIN IMMEDIATE"))
    assert await db.write(lambda: db.connection.in_transaction) is False
    await db.close()


async def test_an_express_unit_runs_at_the_next_safe_point_of_a_long_unit(tmp_path):
    """The inbox's commits (express) do not wait for a sweep's whole chunk: the chunk lets
    them through at its safe points, never inside its transaction; they overtake the other
    units queued behind the chunk, and keep their own order."""
    db = StateDatabase(tmp_path / "state.db")
    order: list[str] = []
    started, release = threading.Event(), threading.Event()

    def chunk() -> None:
        started.set()
        release.wait(10)
        db.connection.execute("BEGIN IMMEDIATE")
        db.interleave()  # inside the transaction: nothing runs
        order.append("chunk written")
        db.connection.execute("COMMIT")
        db.interleave()
        order.append("chunk done")

    long = asyncio.ensure_future(db.write(chunk))
    await asyncio.to_thread(started.wait, 10)
    queued = [asyncio.ensure_future(db.write(order.append, "history")),
              asyncio.ensure_future(db.write(order.append, "inbox 1", express=True)),
              asyncio.ensure_future(db.write(order.append, "inbox 2", express=True))]
    await asyncio.sleep(0)  # (each write is queued)
    release.set()
    await asyncio.gather(long, *queued)
    assert order == ["chunk written", "inbox 1", "inbox 2", "chunk done", "history"]
    await db.close()


def _main_file(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(MAIN_FILE.read_text())
    conn.close()


async def test_a_state_file_written_by_main_opens_and_keeps_every_features_data(
        tmp_path, clock, acct):
    """tests/fixtures/state-main-8ddde7e.sql is a state file that main (before the one owner:
    a connection and executor per feature) wrote: three accounts, two inbox rows and a
    secret, a fix episode with its pending request and a baseline, a history point and a
    routing advice. Every feature reads its data back, and the tracker writes on."""
    path = tmp_path / "state.db"
    _main_file(path)
    db = StateDatabase(path)
    tracker = Tracker(StateStore(db), clock=clock)
    loop = RepairLoop(config(), db, sources={}, snapshot=lambda: tracker.snapshot, clock=clock)
    try:
        await tracker.load({"fin": "finicity"})
        assert tracker.fleet("fin").total() == 3
        names, _ = await db.write(tracker.store.labels, "fin")
        assert names == {"4222": "FinBank", "5555": "Slow Bank"}

        inbox = WebhookInbox(db)
        await inbox.open()
        assert await inbox.counts() == (1, 1)
        assert [(e.id, e.owner) for e in await inbox.pending()] == [(2, "c2")]
        assert await inbox.first_seen("fin", "fp-old", NOW + 100) == NOW - 10

        assert loop._baselines == {"fin": NOW - 5}
        episode = await loop.call("episode", 1)
        assert (episode.login_id, episode.request_id, episode.request_code) == (
            "l1", "req-1", "103")
        assert await loop.call("outbox_states") == {"pending": 1}

        history = InstitutionHistory(HistoryStore(db), lambda: None, clock)
        assert await history.read(3600) == {
            ("chase.com", "finicity"): [Point(1763699400, 40, 0.5, 0.5, 0.0, "degraded")]}
        kept, bad = await db.write(RoutingStore(db).load)
        assert bad == 0 and kept["chase.com"].shares == {"finicity": 100}
        assert kept["chase.com"].tracks == {"finicity": Track()}

        assert read_age_counts(db, NOW) == {
            "fin": {"4222": AgeCounts(normal=2), "5555": AgeCounts(never=1)}}

        session = await tracker.begin("fin", "finicity")
        await session.add([acct("a1", 0), acct("a4", 0)])
        await session.finish(SweepReport(complete=False))
        assert tracker.fleet("fin").total() == 4
    finally:
        await loop.stop()
        await tracker.close()
    again = sqlite3.connect(path)
    assert again.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    again.close()


def test_no_sql_outside_the_state_package():
    """The state database has one owner: statements, connections and the sqlite3 module
    stay in exporter/state (the sandbox, a stand-in upstream, keeps its own)."""
    sql = re.compile(r"\.execute(many|script)?\(|^\s*(import sqlite3|from sqlite3 )", re.M)
    found = []
    for path in sorted((ROOT / "exporter").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(("exporter/state/", "exporter/sandbox/")):
            continue
        found += [f"{rel}: {m.group(0).strip()}" for m in sql.finditer(path.read_text())]
    assert found == []
