"""The state store and the tracker's incremental aggregates.

The aggregates a sweep moves chunk by chunk must always equal what the stored rows say
(the rebuild done at start-up); the store migrates schema 1 files and refuses newer ones.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state.accounts import SCHEMA_VERSION, StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import AccountEvent, AgeHistogram, EventKind, FleetState, Tracker
from tests.unit.conftest import DAY, T0, Clock

# ok twice as often; pending; two unknown codes, of which the cap of 1 admits one
CODES = ["0", "0", "185", "103", "910", "NONE", "1234567", "7654321"]


def rebuilt(tracker: Tracker, source: str = "fin") -> FleetState:
    return tracker._read_fleet(source, "finicity")


def categories(store: StateStore, tracker: Tracker) -> dict[str, str]:
    """Stored accounts not in category ok, by key."""
    rows = store.connection.execute("SELECT account_key, code FROM accounts").fetchall()
    return {k: c for k, code in rows if (c := tracker.classify("finicity", code)[0]) != "ok"}


def folded(events: list[AccountEvent], state: dict[str, str]) -> None:
    """Replay account events onto ``state`` (key → non-ok category)."""
    for e in events:
        if e.kind is EventKind.ENTERED:
            state[e.account_key] = e.category
        elif e.kind in (EventKind.BACK_TO_OK, EventKind.REMOVED):
            state.pop(e.account_key, None)


def as_dict(fleet: FleetState) -> dict:
    return {"accounts": dict(fleet.accounts), "otp": dict(fleet.otp),
            "broken": dict(fleet.broken), "success": dict(fleet.success), "never": fleet.never,
            "consent": dict(fleet.consent)}


record = st.tuples(
    st.integers(0, 7),                     # account
    st.sampled_from(CODES),                # code
    st.sampled_from(["1", "2", "3"]),       # institution
    st.sampled_from([None, -2, -1, 0, 0]),  # attempt: none, older nights, tonight
    st.sampled_from([None, "attempt", -3]),  # success: none, at the attempt, days ago
    st.sampled_from([None, None, 10, 40]),  # consent: none, or ending in days
)
sweep = st.tuples(st.lists(record, max_size=12), st.booleans(), st.integers(0, 2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sweeps=st.lists(sweep, min_size=1, max_size=6), batch=st.integers(1, 4))
def test_incremental_aggregates_always_equal_a_rebuild_from_the_rows(sweeps, batch):
    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            clock = Clock()
            store = StateStore(StateDatabase(Path(tmp) / "s.db"))
            tracker = Tracker(store, clock=clock, batch_size=batch, otp_streak_threshold=2,
                              max_unknown_codes=1)
            replayed: dict[str, str] = {}

            async def subscriber(events):
                folded(events, replayed)

            tracker.subscribe(subscriber)
            for records, complete, advance in sweeps:
                session = await tracker.begin("fin", "finicity")
                for key, code, inst, attempt, success, consent in records:
                    at = None if attempt is None else clock.now + attempt * DAY - 3600
                    ok = success == "attempt" and at is not None
                    succ = at if ok else (None if success in (None, "attempt")
                                          else clock.now + success * DAY)
                    end = None if consent is None else clock.now + consent * DAY
                    await session.add([AccountStatus("fin", "finicity", f"acct-{key}", inst,
                                                     f"Bank {inst}", code, at, succ,
                                                     consent_end=end)])
                await session.finish(SweepReport(complete=complete))
                assert as_dict(tracker.fleet("fin")) == as_dict(rebuilt(tracker))
                # the events tell a consumer exactly which accounts are broken, and how
                assert replayed == categories(store, tracker)
                codes = {c for (_i, c, _cat, _f) in tracker.fleet("fin").accounts}
                assert len(codes & {"1234567", "7654321"}) <= 1  # the cap: the other one is "other"
                agg = tracker.snapshot.sources["fin"]
                assert agg.state_accounts == store.connection.execute(
                    "SELECT count(*) FROM accounts").fetchone()[0]
                clock.advance(advance * DAY)
            await tracker.close()

    asyncio.run(run())


async def test_a_reopened_store_publishes_the_same_aggregates(tmp_path, acct, clock):
    store = StateStore(StateDatabase(tmp_path / "s.db"))
    tracker = Tracker(store, clock=clock)
    for codes in ([0, 185, 910, 103], [185, 185, 0, 103], [185, 0, 910, None]):
        session = await tracker.begin("fin", "finicity")
        await session.add([acct(f"a{i}", c, inst=str(i % 2)) for i, c in enumerate(codes)])
        await session.finish(SweepReport(complete=True))
        clock.advance(DAY)
    before = tracker.snapshot.sources["fin"]
    await tracker.close()

    again = Tracker(StateStore(StateDatabase(tmp_path / "s.db")), clock=clock)
    await again.load({"fin": "finicity"})
    after = again.snapshot.sources["fin"]
    assert (after.accounts, after.fixable, after.otp_suspected, after.transitions) == (
        before.accounts, before.fixable, before.otp_suspected, before.transitions)
    assert list(after.success) == list(before.success)
    assert {c: list(h) for c, h in after.broken_since.items()} == {
        c: list(h) for c, h in before.broken_since.items()}
    await again.close()


async def test_a_sweep_that_fails_half_way_keeps_store_and_aggregates_in_step(
        tmp_path, acct, clock, monkeypatch):
    store = StateStore(StateDatabase(tmp_path / "s.db"))
    tracker = Tracker(store, clock=clock, batch_size=2)
    session = await tracker.begin("fin", "finicity")
    await session.add([acct(f"a{i}", 0) for i in range(4)])
    await session.finish(SweepReport(complete=True))
    clock.advance(DAY)

    session = await tracker.begin("fin", "finicity")
    await session.add([acct("a0", 910), acct("a1", 910)])  # one chunk committed
    calls = []

    def broken_disk(*args):
        calls.append(args)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "write_chunk", broken_disk)
    with pytest.raises(sqlite3.OperationalError):
        await session.add([acct("a2", 910), acct("a3", 910)])
    assert calls
    assert as_dict(tracker.fleet("fin")) == as_dict(rebuilt(tracker))
    assert tracker.fleet("fin").accounts[("4222", "910", "institution", 0)] == 2
    await tracker.close()


NAMES_AND_TRANSITIONS = """
CREATE TABLE institutions (source TEXT NOT NULL, institution_id TEXT NOT NULL,
    name TEXT NOT NULL, PRIMARY KEY (source, institution_id)) WITHOUT ROWID;
CREATE TABLE transitions (source TEXT NOT NULL, provider TEXT NOT NULL,
    institution_id TEXT NOT NULL, from_category TEXT NOT NULL, to_category TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (source, provider, institution_id, from_category, to_category)) WITHOUT ROWID;
"""
"""The institutions and transitions tables, the same in schemas 1 to 4."""

V1_SCHEMA = """
CREATE TABLE accounts (
    source TEXT NOT NULL, account_key TEXT NOT NULL, provider TEXT NOT NULL,
    institution_id TEXT NOT NULL, code TEXT NOT NULL, category TEXT NOT NULL,
    fixable INTEGER NOT NULL, attempt_ts REAL, success_ts REAL, broken_since REAL,
    mfa_streak INTEGER NOT NULL, after_fix INTEGER NOT NULL, relapsed INTEGER NOT NULL,
    otp INTEGER NOT NULL, sweep_id INTEGER NOT NULL, PRIMARY KEY (source, account_key)
) WITHOUT ROWID;
""" + NAMES_AND_TRANSITIONS + """CREATE TABLE sweeps (source TEXT PRIMARY KEY, last_id INTEGER NOT NULL) WITHOUT ROWID;
PRAGMA user_version=1;
"""


async def test_schema_1_state_is_migrated_and_streaks_carry_on(tmp_path, acct, clock):
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.executescript(V1_SCHEMA)
    attempt = clock.now - DAY - 3600
    db.executemany(
        "INSERT INTO accounts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [("fin", "a1", "finicity", "4222", "185", "mfa", 1, attempt, T0 - 9 * DAY,
          attempt, 2, 0, 0, 0, 7),
         ("fin", "a2", "finicity", "4222", "0", "ok", 0, attempt, attempt, None, 0, 1, 0, 0, 7),
         ("fin", "a3", "finicity", "4222", "185", "mfa", 1, attempt, None, attempt, 1, 0, 1,
          1, 7)])
    db.execute("INSERT INTO institutions VALUES ('fin', '4222', 'FinBank')")
    db.execute("INSERT INTO transitions VALUES ('fin', 'finicity', '4222', 'ok', 'mfa', 5)")
    db.commit()
    db.close()

    store = StateStore(StateDatabase(path))
    assert store.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    rows = dict(store.connection.execute("SELECT account_key, flags FROM accounts"))
    assert rows == {"a1": 0, "a2": 4, "a3": 3}  # after_fix → 4; relapsed 2 + otp 1 → 3
    tables = {r[0] for r in store.connection.execute("SELECT name FROM sqlite_master")}
    assert "accounts_v1" not in tables and "sweeps" not in tables

    tracker = Tracker(store, clock=clock)
    await tracker.load({"fin": "finicity"})
    agg = tracker.snapshot.sources["fin"]
    assert agg.otp_suspected == (("4222", "FinBank", 1),)
    assert ("4222", "FinBank", "ok", "mfa", 5) in agg.transitions
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("a1", 185), acct("a2", 0), acct("a3", 185)])
    await session.finish(SweepReport(complete=True))
    # a1's third distinct 185 attempt makes it a suspect; a3 stays one (relapsed)
    assert tracker.snapshot.sources["fin"].otp_suspected == (("4222", "FinBank", 2),)
    await tracker.close()


def test_a_state_file_from_a_newer_agent_is_refused_with_a_clear_error(tmp_path):
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(sqlite3.DatabaseError, match="newer than this agent"):
        StateStore(StateDatabase(path))


def test_age_histogram_counts_by_the_minute_and_errs_young():
    minute = 28_000_000.0
    hist = AgeHistogram.of({minute: 2, minute + 10: 3})
    start = minute * 60
    assert (hist.total, list(hist.cumulative)) == (5, [2, 5])
    assert hist.since(start) == 5
    assert hist.since(start + 59) == 5        # the first minute ends after start + 59 s
    assert hist.since(start + 60) == 3        # ... but not after start + 60 s
    assert hist.since(start + 11 * 60) == 0
    assert hist.time_sum == 2 * start + 3 * (start + 600)
    assert list(hist) == [start] * 2 + [start + 600] * 3


async def test_rows_are_read_ahead_in_first_seen_order_and_found_in_any_order(
        tmp_path, acct, clock, monkeypatch):
    store = StateStore(StateDatabase(tmp_path / "s.db"))
    tracker = Tracker(store, clock=clock, batch_size=3)
    keys = [f"MBR-{i:02d}" for i in range(12)]

    async def sweep(order, code):
        session = await tracker.begin("fin", "finicity")
        for key in order:
            await session.add([acct(key, code)])
        await session.finish(SweepReport(complete=True))

    await sweep(keys, 0)
    looked_up: list[str] = []
    index_lookup = store.load_accounts
    monkeypatch.setattr(store, "load_accounts",
                        lambda source, ks: looked_up.extend(ks) or index_lookup(source, ks))
    clock.advance(DAY)
    await sweep(keys, 185)  # the same order as the night they were first seen
    assert looked_up == []
    clock.advance(DAY)
    await sweep(list(reversed(keys)), 185)  # out of order: the key index finds them
    assert looked_up
    agg = tracker.snapshot.sources["fin"]
    assert agg.accounts == (("4222", "FinBank", "185", "mfa", 12),)
    assert as_dict(tracker.fleet("fin")) == as_dict(rebuilt(tracker))
    streaks = {k: s for k, s in store.connection.execute("SELECT account_key, mfa_streak FROM accounts")}
    assert streaks == dict.fromkeys(keys, 2)
    await tracker.close()


async def test_a_new_source_beside_a_big_one_reads_ahead_within_bounds(
        tmp_path, acct, clock, monkeypatch):
    store = StateStore(StateDatabase(tmp_path / "s.db"))
    tracker = Tracker(store, clock=clock, batch_size=4)

    async def sweep(source, keys):
        session = await tracker.begin(source, "finicity")
        await session.add([acct(k, 0, source=source) for k in keys])
        await session.finish(SweepReport(complete=True))

    await sweep("big", [f"b{i}" for i in range(200)])
    spans: list[tuple[int, int, int]] = []
    ahead = store.rows_after
    monkeypatch.setattr(store, "rows_after", lambda source, after, upto, limit: (
        spans.append((after, upto, limit)) or ahead(source, after, upto, limit)))
    await sweep("new", [f"n{i}" for i in range(8)])
    assert spans == []  # nothing stored for it yet: nothing to read ahead
    for i in range(3):  # interleave the two sources' first-seen ids
        await sweep("new", [f"n{j}" for j in range(8 + 4 * i)])
        await sweep("big", [f"b{j}" for j in range(200)] + [f"b-late{i}"])
    assert spans and all(upto - after <= 4 * limit for after, upto, limit in spans)
    assert tracker.snapshot.sources["new"].state_accounts == 16
    assert tracker.snapshot.sources["big"].state_accounts == 201
    for source in ("new", "big"):
        assert as_dict(tracker.fleet(source)) == as_dict(rebuilt(tracker, source))
    await tracker.close()


V2_SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, source TEXT NOT NULL, account_key TEXT NOT NULL,
    institution_id TEXT NOT NULL, code TEXT NOT NULL, attempt_ts REAL, success_ts REAL,
    broken_since REAL, mfa_streak INTEGER NOT NULL, flags INTEGER NOT NULL);
CREATE UNIQUE INDEX accounts_by_key ON accounts (source, account_key);
""" + NAMES_AND_TRANSITIONS + """PRAGMA user_version=2;
"""


def stored(store: StateStore) -> dict[str, tuple]:
    """key → (id, code, streak), and the key index agrees with the rows."""
    db = store.connection
    rows = {k: (i, c, s) for i, k, c, s in db.execute(
        "SELECT id, account_key, code, mfa_streak FROM accounts")}
    assert len(rows) == db.execute("SELECT count(*) FROM accounts").fetchone()[0]
    return rows


async def test_schema_2_state_is_migrated_to_a_key_table(tmp_path, acct, clock):
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.executescript(V2_SCHEMA)
    attempt = clock.now - DAY - 3600
    db.executemany("INSERT INTO accounts VALUES (?,?,?,?,?,?,?,?,?,?)",
                   [(1, "fin", "b", "4222", "185", attempt, None, attempt, 2, 0),
                    (2, "fin", "a", "4222", "0", attempt, attempt, None, 0, 4)])
    db.commit()
    db.close()

    store = StateStore(StateDatabase(path))
    assert store.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.connection.execute("SELECT * FROM account_keys").fetchall() == [
        ("fin", "a", 2), ("fin", "b", 1)]
    indexes = {r[0] for r in store.connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "accounts_by_key" not in indexes
    tracker = Tracker(store, clock=clock)
    await tracker.load({"fin": "finicity"})
    session = await tracker.begin("fin", "finicity", read_ahead=False)  # through the key index
    await session.add([acct("b", 185), acct("c", 0)])
    await session.finish(SweepReport(complete=False))
    assert stored(store) == {"b": (1, "185", 3), "a": (2, "0", 0), "c": (3, "0", 0)}
    await tracker.close()


async def test_first_sightings_are_found_before_and_after_the_key_merge(tmp_path, acct, clock):
    """A key seen twice in one sweep, or pushed while the sweep runs, is one account: found
    through the staging lookup before the sweep's end merges it into the key index, and
    through the key index after; a run killed before the merge merges on the next start."""
    path = tmp_path / "s.db"
    store = StateStore(StateDatabase(path))
    tracker = Tracker(store, clock=clock, batch_size=2)
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("m9", 185), acct("m8", 185), acct("m7", 0),
                       acct("m9", 185, attempt=clock.now)])  # m1 again, in the next chunk
    assert store.staged == 3
    # a push finds m2 staged; more staged than a batch: its end merges them
    await tracker.apply_records("fin", "finicity", [acct("m8", 185, attempt=clock.now)])
    assert store.staged == 0
    await session.add([acct("m8", 185, attempt=clock.now), acct("m6", 0)])  # m2 again
    await session.add([acct("m5", 0)])
    assert store.staged == 1
    await session.finish(SweepReport(complete=True))
    assert store.staged == 0
    assert {k: s for k, (_i, _c, s) in stored(store).items()} == {
        "m9": 2, "m8": 2, "m7": 0, "m6": 0, "m5": 0}
    assert store.connection.execute("SELECT count(*) FROM account_keys").fetchone()[0] == 5
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("p1", 0), acct("p2", 0)])  # increasing, after the index's last
    assert store.staged == 0
    assert store.connection.execute("SELECT count(*) FROM account_keys").fetchone()[0] == 7
    await session.finish(SweepReport(complete=False))

    session = await tracker.begin("fin", "finicity")
    await session.add([acct("n2", 0), acct("n1", 0)])  # committed, never merged: "killed"
    assert store.staged == 2
    store.connection.close()  # (no checkpoint, no merge)
    store.database._writer.shutdown(wait=True)

    again = StateStore(StateDatabase(path))
    assert again.staged == 0
    assert again.connection.execute("SELECT count(*) FROM account_keys").fetchone()[0] == 9
    tracker = Tracker(again, clock=clock)
    await tracker.apply_records("fin", "finicity", [acct("n1", 185)])
    assert stored(again)["n1"][1:] == ("185", 0)
    assert len(stored(again)) == 9
    await tracker.close()


async def test_two_new_keys_of_one_hash_are_indexed_at_once(tmp_path, acct, clock, monkeypatch):
    """The staging lookup holds one id per hash: a second key of the same hash makes the
    chunk merge into the key index in its own transaction (nothing is lost or doubled)."""
    import exporter.state.accounts as state

    store = StateStore(StateDatabase(tmp_path / "s.db"))
    tracker = Tracker(store, clock=clock, batch_size=2)
    monkeypatch.setattr(state, "hash", lambda key: 7, raising=False)
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("x2", 910), acct("x1", 0)])  # (not increasing: staged)
    assert store.staged == 0  # merged at once
    await session.add([acct("x1", 185), acct("x3", 0)])
    await session.finish(SweepReport(complete=True))
    assert {k: c for k, (_i, c, _s) in stored(store).items()} == {
        "x1": "185", "x2": "910", "x3": "0"}
    assert store.connection.execute("SELECT count(*) FROM account_keys").fetchone()[0] == 3
    await tracker.close()


async def test_ids_after_a_deleted_tail_stay_above_the_merged_ones(tmp_path, acct, clock):
    """First sightings take the next ids in a row, above every id the key index has known
    (a complete sweep that dropped the newest rows does not hand their ids out again), and
    are found through the staging lookup until the merge."""
    store = StateStore(StateDatabase(tmp_path / "s.db"))
    tracker = Tracker(store, clock=clock, batch_size=2)
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("k3", 0), acct("k1", 0), acct("k2", 0)])
    await session.finish(SweepReport(complete=True))
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("k3", 0)])
    await session.finish(SweepReport(complete=True))  # k1 and k2 (ids 2, 3) dropped
    assert {k: i for k, (i, _c, _s) in stored(store).items()} == {"k3": 1}
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("k1", 185), acct("k9", 0), acct("k3", 0), acct("k5", 0)])
    assert store.staged == 3
    await session.add([acct("k1", 185, attempt=clock.now), acct("k4", 0)])  # k1 staged
    await session.finish(SweepReport(complete=True))
    assert stored(store) == {"k3": (1, "0", 0), "k1": (4, "185", 2), "k9": (5, "0", 0),
                             "k5": (6, "0", 0), "k4": (7, "0", 0)}
    assert store.connection.execute(
        "SELECT account_key, id FROM account_keys ORDER BY 1").fetchall() == [
        ("k1", 4), ("k3", 1), ("k4", 7), ("k5", 6), ("k9", 5)]
    await tracker.close()



@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(min_size=1, max_size=6), max_size=700), max_size=6),
       st.booleans())
def test_the_staging_table_finds_what_it_was_given(batches, tiny_hashes):
    """The staging lookup (open addressing over machine integers) against a dict: every key
    entered is found with its id through growth; a key whose hash is already taken is
    refused (``add`` says so: the store then merges); a key never entered is found only
    if it shares an entered key's hash (the store then checks the row's key)."""
    import exporter.state.accounts as state

    def hashed(key: str) -> int:
        return (len(key) * 7 + ord(key[0])) % 61 if tiny_hashes else hash(key)

    state.hash = hashed  # (the module's name lookup: what the table calls)
    try:
        staging, model, taken, next_id = state._Staging(), {}, set(), 1
        for batch in batches:
            fresh = [k for k in dict.fromkeys(batch) if k not in model]
            expected = True
            for i, key in enumerate(fresh, next_id):
                h = hashed(key) or 1
                if h in taken:
                    expected = False
                else:
                    model[key] = i
                    taken.add(h)
            assert staging.add(fresh, next_id) == expected
            next_id += len(fresh)
            assert len(staging) == len(model)
            assert staging.find(model) == model
            stranger = "\x00" * 7
            assert stranger not in staging.find([stranger]) or (hashed(stranger) or 1) in taken
    finally:
        del state.hash


def test_the_schema_2_migration_uses_the_rules_flag_bits():
    """A schema-1 file's MFA columns become the bits the transition rule reads."""
    from exporter.state.accounts import _SCHEMA_2_FLAGS
    from exporter.tracker.transition import AFTER_FIX, OTP, RELAPSED

    assert _SCHEMA_2_FLAGS == {"otp": OTP, "relapsed": RELAPSED, "after_fix": AFTER_FIX}
