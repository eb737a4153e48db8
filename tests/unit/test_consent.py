"""The consent horizon: Finicity's consent end read at the boundary, kept per account,
counted per institution within 7, 30 and 90 days of now, and migrated into old state files."""

from __future__ import annotations

import os
import sqlite3

import pytest

from exporter.sources.base import SweepReport
from exporter.state.accounts import SCHEMA_VERSION, StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import EventKind, Tracker
from exporter.upstreams.finicity.payloads import FinicityAccount
from tests.unit.conftest import DAY, Harness
from tests.unit.support import NOW
from tests.unit.test_source_payloads import account, reader
from tests.unit.test_state import NAMES_AND_TRANSITIONS, as_dict, rebuilt

EXPIRING = "openfinance_consent_expiring_accounts"


def expiring(h: Harness, inst: str = "4222", name: str = "FinBank") -> dict[str, float | None]:
    return {w: h.value(EXPIRING, source="fin", provider="finicity", institution_id=inst,
                       institution=name, within=w) for w in ("7d", "30d", "90d")}


# --------------------------------------------------------------------------- the boundary


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(int(NOW + 30 * DAY), float(int(NOW + 30 * DAY))),
     (str(int(NOW + 30 * DAY)), float(int(NOW + 30 * DAY))),
     ("2023-07-26T11:14:11Z", 1690370051.0),
     (int(NOW + 400 * DAY), float(int(NOW + 400 * DAY)))],
)
def test_the_consent_end_is_read_as_epoch_number_epoch_string_or_iso(raw, expected):
    parse, observer = reader()
    item = parse.item(FinicityAccount, account(authorizationExpires=True,
                                               authorizationEndDate=raw))
    assert item.consent_end == expected
    assert observer.invalid == []


@pytest.mark.parametrize("expires", [False, "false", None])
def test_an_end_date_means_nothing_unless_the_consent_expires(expires):
    parse, _ = reader()
    fields = {"authorizationEndDate": int(NOW + 30 * DAY)}
    if expires is not None:
        fields["authorizationExpires"] = expires
    assert parse.item(FinicityAccount, account(**fields)).consent_end is None


@pytest.mark.parametrize("raw", [0, "soon", 1_700_000_000_000, [1]])
def test_an_absurd_consent_end_is_none_and_counted(raw):
    parse, observer = reader()
    item = parse.item(FinicityAccount, account(authorizationExpires=True,
                                               authorizationEndDate=raw))
    assert item is not None and item.consent_end is None and item.aggregationStatusCode == "185"
    assert observer.invalid == ["invalid_timestamp"]


# --------------------------------------------------------------------------- buckets


async def test_consent_ends_are_counted_within_7_30_and_90_days_cumulatively(harness, acct, clock):
    ends = {"a": 3, "b": 20, "c": 60, "d": 200, "e": -2, "f": None}
    await harness.sweep([acct(k, 0, consent_end=None if d is None else clock.now + d * DAY)
                         for k, d in ends.items()])
    assert expiring(harness) == {"7d": 1, "30d": 2, "90d": 3}


async def test_the_windows_move_with_the_clock_between_sweeps(harness, acct, clock):
    await harness.sweep([acct(k, 0, consent_end=clock.now + d * DAY)
                         for k, d in {"a": 3, "b": 20, "c": 60}.items()])
    clock.advance(14 * DAY)  # a's end has passed, b's is 6 days away, c's 46
    assert expiring(harness) == {"7d": 1, "30d": 1, "90d": 2}


async def test_a_renewal_moves_the_end_and_a_consent_that_stops_expiring_leaves(harness, acct, clock):
    await harness.sweep([acct("a", 0, consent_end=clock.now + 2 * DAY),
                         acct("b", 0, consent_end=clock.now + 5 * DAY)])
    assert expiring(harness)["7d"] == 2
    clock.advance(3600)
    await harness.sweep([acct("a", 0, consent_end=clock.now + 365 * DAY), acct("b", 0)])
    assert expiring(harness) == {"7d": 0, "30d": 0, "90d": 0}
    assert as_dict(harness.tracker.fleet("fin")) == as_dict(rebuilt(harness.tracker))


async def test_small_institutions_fold_into_other_as_the_fleet_series_do(tmp_path, acct, clock):
    h = Harness(tmp_path / "s.db", clock, institution_min_accounts=3)
    end = clock.now + 4 * DAY
    await h.sweep([*(acct(f"big{i}", 0, consent_end=end) for i in range(3)),
                   acct("small", 0, inst="77", name="Tiny Bank", consent_end=end)])
    assert expiring(h)["7d"] == 3
    assert expiring(h, "other", "other")["7d"] == 1
    assert h.value(EXPIRING, source="fin", provider="finicity", institution_id="77",
                   institution="Tiny Bank", within="7d") is None
    h.store.close()


async def test_institutions_without_expiring_consents_have_no_series(harness, acct):
    await harness.sweep([acct("a", 0), acct("m", "CONNECTED", provider="mx", source="mx")])
    assert harness.samples(EXPIRING) == []


# --------------------------------------------------------------------------- events


async def test_a_consent_event_comes_once_per_change_of_the_end(harness, acct, clock):
    events = []

    async def subscriber(batch):
        events.extend(e for e in batch if e.kind is EventKind.CONSENT)

    harness.tracker.subscribe(subscriber)
    end = clock.now + 30 * DAY
    await harness.sweep([acct("a", 0, consent_end=end)])
    await harness.sweep([acct("a", 0, consent_end=end)])  # a re-poll
    clock.advance(DAY)
    await harness.sweep([acct("a", 0, consent_end=end)])  # a new attempt, same consent
    await harness.sweep([acct("a", 0, consent_end=end + 365 * DAY)])  # renewed
    assert [e.consent_end for e in events] == [end, end + 365 * DAY]
    assert events[0].account_key == "a"


# --------------------------------------------------------------------------- migration

V3_SCHEMA = """
CREATE TABLE accounts (id INTEGER PRIMARY KEY, source TEXT NOT NULL, account_key TEXT NOT NULL,
    institution_id TEXT NOT NULL, code TEXT NOT NULL, attempt_ts REAL, success_ts REAL,
    broken_since REAL, mfa_streak INTEGER NOT NULL, flags INTEGER NOT NULL);
CREATE TABLE account_keys (source TEXT NOT NULL, account_key TEXT NOT NULL, id INTEGER NOT NULL,
    PRIMARY KEY (source, account_key)) WITHOUT ROWID;
CREATE TABLE keys_merged (upto INTEGER NOT NULL);
INSERT INTO keys_merged VALUES (2);
CREATE TRIGGER accounts_forget_key AFTER DELETE ON accounts BEGIN DELETE FROM account_keys WHERE source = old.source AND account_key = old.account_key AND id = old.id; END;
""" + NAMES_AND_TRANSITIONS + """PRAGMA user_version=3;
"""


async def test_a_schema_3_state_file_gains_the_consent_end_in_place(tmp_path, acct, clock):
    path = tmp_path / "s.db"
    db = sqlite3.connect(path)
    db.executescript(V3_SCHEMA)
    attempt = clock.now - DAY
    db.executemany("INSERT INTO accounts VALUES (?,?,?,?,?,?,?,?,?,?)",
                   [(1, "fin", "a", "4222", "185", attempt, None, attempt, 2, 0),
                    (2, "fin", "b", "4222", "0", attempt, attempt, None, 0, 4)])
    db.executemany("INSERT INTO account_keys VALUES (?,?,?)", [("fin", "a", 1), ("fin", "b", 2)])
    db.commit()
    db.close()
    inode = os.stat(path).st_ino

    store = StateStore(StateDatabase(path))
    assert store.connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert os.stat(path).st_ino == inode  # the same file: altered, not copied
    assert store.connection.execute(
        "SELECT id, account_key, code, mfa_streak, flags, consent_end FROM accounts ORDER BY id"
    ).fetchall() == [(1, "a", "185", 2, 0, None), (2, "b", "0", 0, 4, None)]
    tracker = Tracker(store, clock=clock, otp_streak_threshold=3)
    await tracker.load({"fin": "finicity"})
    session = await tracker.begin("fin", "finicity")
    await session.add([acct("a", 185, consent_end=clock.now + 5 * DAY), acct("b", 0)])
    await session.finish(SweepReport(complete=True))
    rows = store.connection.execute(
        "SELECT id, mfa_streak, flags & 1, consent_end FROM accounts ORDER BY id").fetchall()
    assert rows == [(1, 3, 1, clock.now + 5 * DAY), (2, 0, 0, None)]  # streak went on
    [(_inst, _name, horizon)] = tracker.snapshot.sources["fin"].consent
    assert horizon.expiring(clock.now, 7 * DAY) == 1
    await tracker.close()


# --------------------------------------------------------------------------- the sandbox


def _fleet(**consent):
    from exporter.sandbox import SandboxClock, load_scenario
    from exporter.sandbox.fleet import Fleet

    scenario = load_scenario(None, {"finicity": {"units": 300, "institutions": 8,
                                                 "consent": {"enabled": True, **consent}},
                                    "mx": {"units": 50}})
    t = [1_770_000_000.0]
    clock = SandboxClock(0, time_source=lambda: t[0])
    return Fleet(scenario, clock), clock, t


def test_the_sandbox_gives_consent_ends_only_at_its_oauth_banks_and_never_at_mx():
    fleet, clock, _ = _fleet(institution_ranks=[3], share=0.8)
    sim = fleet.finicity
    assert sim.consent_first_end and not fleet.mx.consent_first_end
    assert {sim.conn_inst[k] for k in sim.consent_first_end} == {3}
    at_bank = sum(1 for k in range(sim.connections) if sim.conn_inst[k] == 3)
    assert 0.6 * at_bank < len(sim.consent_first_end) <= at_bank
    k = next(iter(sim.consent_first_end))
    start, end = sim.consent_dates(k, 0, clock)
    assert end == clock.night_start(0) + sim.consent_first_end[k] * 86400
    assert end - start == 90 * 86400


def test_an_unrenewed_consent_answers_947_from_its_end_night_and_a_renewal_moves_the_end():
    fleet, clock, t = _fleet(institution_ranks=[3], wave_share=1.0, wave_nights=2)
    sim = fleet.finicity
    k = next(k for k, n in sim.consent_first_end.items()
             if n == 2 and fleet.current_code("finicity", k) == "0")
    renewed = next(j for j, n in sim.consent_first_end.items() if n == 2 and j != k)
    t[0] += 10
    clock.advance(1)
    first_end = sim.consent_dates(renewed, 1, clock)[1]
    assert fleet.fix("finicity", renewed)  # renewed before its end (its code is ok)
    assert sim.consent_dates(renewed, 1, clock)[1] == first_end + 89 * 86400
    t[0] += 10
    clock.advance(1)
    assert fleet.current_code("finicity", k) == "947"
    assert fleet.current_code("finicity", renewed) != "947"
    truth = fleet.truth()
    assert any(r["code"] == "947" and r["institution_id"] == sim.institutions[3].id
               for r in truth["accounts"])
    assert fleet.fix("finicity", k)  # a repair after the end renews too, and fixes the 947
    assert fleet.current_code("finicity", k) == "0"
    assert sim.consent_dates(k, 2, clock)[1] == clock.night_start(0) + 92 * 86400


async def test_the_sandboxs_consent_accounts_match_the_spec_in_both_account_routes():
    from tests.unit.test_sandbox_support import Sandbox, finicity_spec, schema_errors

    sb = Sandbox({"finicity": {"consent": {"enabled": True, "institution_ranks": [0, 1, 2],
                                           "share": 1.0}}})
    try:
        token = await sb.token()
        seen = 0
        for cid in (await sb.all_customer_ids(token))[:60]:
            for route, schema in (("accounts", "CustomerAccounts"),
                                  ("accounts/simple", "CustomerAccountsSimple")):
                body = (await sb.finicity(f"/aggregation/v1/customers/{cid}/{route}",
                                          token)).json()
                assert schema_errors(finicity_spec(), schema, body) == []
                for acct in body["accounts"]:
                    if acct["authorizationExpires"]:
                        seen += 1
                        assert isinstance(acct["authorizationEndDate"], int)
                        assert acct["authorizationEndDate"] > acct["authorizationStartDate"]
        assert seen > 0
    finally:
        await sb.close()
