from __future__ import annotations

import gc
import sqlite3
from dataclasses import replace

import pytest

from exporter.records import clean_label
from exporter.sources.base import SweepReport
from exporter.tracker import EventKind
from tests.unit.conftest import DAY, Harness
from tests.unit.test_state import as_dict, rebuilt

SUSPECTS = "openfinance_otp_suspected_accounts"
ACCOUNTS = "openfinance_accounts"


def _minute(ts: float) -> float:
    """Ages are kept to the minute."""
    return ts // 60 * 60


def _at(h: Harness, **labels) -> float | None:
    base = {"source": "fin", "provider": "finicity", "institution_id": "4222",
            "institution": "FinBank"}
    return h.value(ACCOUNTS, **{**base, **labels})


async def test_repeated_185_counts_attempts_not_polls(harness, acct, clock):
    for _night in range(2):
        attempt = clock.now - 3600
        for _poll in range(5):  # hourly polls see the same nightly attempt again
            await harness.sweep([acct("a1", 185, attempt=attempt)])
            clock.advance(3600)
        clock.advance(DAY - 5 * 3600)
    assert harness.value(SUSPECTS, source="fin", provider="finicity", institution_id="4222",
                         institution="FinBank") is None
    await harness.sweep([acct("a1", 185)])
    assert harness.value(SUSPECTS, source="fin", provider="finicity", institution_id="4222",
                         institution="FinBank") == 1


async def test_otp_streak_is_broken_by_successful_attempts(harness, acct, clock):
    for code in (185, 185, 0, 0, 185, 185):
        await harness.sweep([acct("a1", code), acct("a2", 0)])
        clock.advance(DAY)
    assert harness.samples(SUSPECTS) == []


async def test_falling_back_to_185_right_after_a_fix_is_suspected(harness, acct, clock):
    for code in (185, 0, 185):
        await harness.sweep([acct("a1", code)])
        clock.advance(DAY)
    [(labels, value)] = harness.samples(SUSPECTS)
    assert value == 1 and labels["institution_id"] == "4222"


async def test_mx_challenged_streak_counts_settled_attempts(harness, acct, clock):
    for _ in range(3):
        rec = acct("MBR-1", "CHALLENGED", inst="mxbank", name="MX Bank", provider="mx",
                   source="mx")
        await harness.sweep([rec], source="mx", provider="mx")
        # the member is seen again while an aggregation runs: no settled attempt
        await harness.sweep([acct("MBR-1", "CHALLENGED", inst="mxbank", name="MX Bank",
                                  provider="mx", source="mx", attempt=None)],
                            source="mx", provider="mx")
        clock.advance(DAY)
    assert harness.value(SUSPECTS, source="mx", provider="mx", institution_id="mxbank",
                         institution="MX Bank") == 1


async def test_unknown_code_is_counted_under_unknown_and_logged_once(harness, acct, caplog):
    await harness.sweep([acct("a1", 1234567), acct("a2", 1234567)])
    await harness.sweep([acct("a1", 1234567), acct("a2", 1234567)])
    assert _at(harness, code="1234567", category="unknown") == 2
    assert harness.value("openfinance_unknown_codes_total", source="fin",
                         provider="finicity") == 4
    warnings = [r for r in caplog.records if "unknown status code" in r.getMessage()]
    assert len(warnings) == 1


async def test_never_aggregated_account_is_pending(harness, acct):
    await harness.sweep([acct("a1", "NONE", attempt=None, success=None)])
    assert _at(harness, code="NONE", category="pending") == 1


async def test_partial_sweep_keeps_accounts_it_could_not_read(harness, acct):
    await harness.sweep([acct("a1", 0), acct("a2", 910)])
    await harness.sweep([acct("a1", 0)], complete=False)
    assert _at(harness, code="910", category="institution") == 1
    assert _at(harness, code="0", category="ok") == 1


async def test_complete_sweep_drops_accounts_gone_upstream(harness, acct):
    await harness.sweep([acct("a1", 0), acct("a2", 910)])
    await harness.sweep([acct("a1", 0)])
    assert _at(harness, code="910", category="institution") is None
    assert harness.tracker.snapshot.sources["fin"].state_accounts == 1


async def test_transitions_are_counted_between_categories(harness, acct, clock):
    for code in (0, 910, 910, 0):
        await harness.sweep([acct("a1", code)])
        clock.advance(DAY)
    labels = {"source": "fin", "provider": "finicity", "institution_id": "4222",
              "institution": "FinBank"}
    assert harness.value("openfinance_status_transitions_total", **labels,
                         from_category="ok", to_category="institution") == 1
    assert harness.value("openfinance_status_transitions_total", **labels,
                         from_category="institution", to_category="ok") == 1


async def test_broken_since_survives_code_changes_within_non_ok(harness, acct, clock):
    await harness.sweep([acct("a1", 0)])
    clock.advance(DAY)
    await harness.sweep([acct("a1", 910)])
    broke_at = clock.now - 3600
    clock.advance(DAY)
    await harness.sweep([acct("a1", 905)])
    clock.advance(2 * DAY)
    agg = harness.tracker.snapshot.sources["fin"]
    assert list(agg.broken_since["institution"]) == [_minute(broke_at)]
    # age is 3 days + 1 h: inside the 7 d bucket, outside the 3 d one
    le = {"source": "fin", "provider": "finicity", "category": "institution"}
    name = "openfinance_broken_account_age_seconds_bucket"
    assert harness.value(name, **le, le="259200.0") == 0
    assert harness.value(name, **le, le="604800.0") == 1


async def test_last_success_age_counts_never_succeeded_only_in_inf(harness, acct, clock):
    await harness.sweep([acct("a1", 0), acct("a2", 103, success=None)])
    name = "openfinance_account_last_success_age_seconds_bucket"
    labels = {"source": "fin", "provider": "finicity"}
    assert harness.value(name, **labels, le="3600.0") == 1
    assert harness.value(name, **labels, le="+Inf") == 2


async def test_missing_success_date_keeps_the_previous_one(harness, acct, clock):
    await harness.sweep([acct("a1", 0)])
    first = clock.now - 3600
    clock.advance(DAY)
    await harness.sweep([acct("a1", 185, success=None)])
    assert list(harness.tracker.snapshot.sources["fin"].success) == [_minute(first)]


async def test_small_institutions_fold_into_other(tmp_path, clock, acct):
    h = Harness(tmp_path / "s.db", clock, institution_min_accounts=2)
    await h.sweep([acct("a1", 0, inst="1", name="Big"), acct("a2", 0, inst="1", name="Big"),
                   acct("a3", 0, inst="2", name="Tiny")])
    assert h.value(ACCOUNTS, source="fin", provider="finicity", institution_id="other",
                   institution="other", code="0", category="ok") == 1
    assert h.value(ACCOUNTS, source="fin", provider="finicity", institution_id="1",
                   institution="Big", code="0", category="ok") == 2
    h.store.close()


async def test_institution_name_fallback_never_replaces_a_known_name(harness, acct, clock):
    await harness.sweep([acct("a1", 0, name="FinBank")])
    clock.advance(DAY)
    await harness.sweep([acct("a1", 0, name="4222")])  # the lookup failed this time
    assert _at(harness, code="0", category="ok") == 1


async def test_hostile_institution_names_are_escaped_not_dropped(harness, acct):
    name = clean_label('Bank "of" \\ the\nWorld ☃', "4222")  # as the source hands it over
    await harness.sweep([acct("a1", 0, name=name)])
    body, _ctype, _gz = harness.exposition.render()
    line = next(x for x in body.decode().splitlines() if x.startswith("openfinance_accounts{"))
    assert 'institution="Bank \\"of\\" \\\\ the World ☃"' in line


async def test_state_survives_a_reopen(tmp_path, clock, acct):
    h = Harness(tmp_path / "s.db", clock)
    for _ in range(2):
        await h.sweep([acct("a1", 185)])
        clock.advance(DAY)
    h.store.close()
    h2 = Harness(tmp_path / "s.db", clock)
    await h2.tracker.load({"fin": "finicity"})
    assert h2.value(ACCOUNTS, source="fin", provider="finicity", institution_id="4222",
                    institution="FinBank", code="185", category="mfa") == 1
    await h2.sweep([acct("a1", 185)])
    assert h2.value(SUSPECTS, source="fin", provider="finicity", institution_id="4222",
                    institution="FinBank") == 1
    h2.store.close()


# -- account events ------------------------------------------------------------------


def _recorder(h: Harness, *, steady: bool = False) -> list:
    received: list = []

    async def subscriber(events):
        received.extend(events)

    h.tracker.subscribe(subscriber, steady=steady)
    return received


async def test_events_arrive_after_the_chunk_committed_with_their_fields(harness, acct, clock):
    received: list = []

    async def subscriber(events):
        # another connection sees only committed rows: the change has landed
        with sqlite3.connect(harness.path) as db:
            stored = dict(db.execute("SELECT account_key, code FROM accounts"))
        received.extend((e, stored.get(e.account_key)) for e in events)

    harness.tracker.subscribe(subscriber)
    await harness.sweep([acct("a1", 0), acct("a2", 0)])
    assert received == []  # ok accounts seen first: nothing to tell
    clock.advance(DAY)
    rec = replace(acct("a2", 103), owner_id="cust-7", login_id="login-9")
    await harness.sweep([acct("a1", 0), rec])
    assert [(e.kind, code) for e, code in received] == [
        (EventKind.ENTERED, "103"), (EventKind.BECAME_FIXABLE, "103")]
    event = received[0][0]
    assert (event.source, event.provider, event.account_key, event.owner_id, event.login_id,
            event.institution_id, event.institution, event.code, event.category,
            event.fixable, event.otp_suspect, event.previous_code, event.previous_category,
            event.broken_since, event.at) == (
        "fin", "finicity", "a2", "cust-7", "login-9", "4222", "FinBank", "103", "credentials",
        True, False, "0", "ok", clock.now - 3600, clock.now)


async def test_a_failed_chunk_emits_nothing(harness, acct, clock, monkeypatch):
    received = _recorder(harness)
    await harness.sweep([acct("a1", 0)])
    clock.advance(DAY)

    def broken_disk(*args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(harness.store, "write_chunk", broken_disk)
    with pytest.raises(sqlite3.OperationalError):
        await harness.sweep([acct("a1", 910), acct("a2", 103)])
    assert received == []
    assert _at(harness, code="0", category="ok") == 1
    gc.collect()
    assert not harness.tracker._sessions["fin"]  # the failed sweep's session is not kept


async def test_removed_comes_from_a_complete_sweep_only(harness, acct, clock):
    received = _recorder(harness)
    await harness.sweep([acct("a1", 0), acct("a2", 910)])
    received.clear()
    clock.advance(DAY)
    await harness.sweep([acct("a1", 0)], complete=False)
    assert received == []
    await harness.sweep([acct("a1", 0)])
    [event] = received
    assert (event.kind, event.account_key, event.code, event.category, event.institution,
            event.owner_id) == (EventKind.REMOVED, "a2", "910", "institution", "FinBank", None)


async def test_still_broken_goes_only_to_steady_subscribers(harness, acct, clock):
    plain, steady = _recorder(harness), _recorder(harness, steady=True)
    await harness.sweep([acct("a1", 103), acct("a2", 910), acct("a3", 0)])
    clock.advance(DAY)
    await harness.sweep([acct("a1", 103), acct("a2", 910), acct("a3", 0)])
    again = [(e.kind, e.account_key) for e in steady[len(plain):]]
    assert again == [(EventKind.STILL_BROKEN, "a1")]
    assert EventKind.STILL_BROKEN not in {e.kind for e in plain}


async def test_a_failing_subscriber_never_breaks_the_sweep(harness, acct, caplog):
    async def broken(events):
        raise RuntimeError("consumer bug")

    harness.tracker.subscribe(broken)
    received = _recorder(harness)
    await harness.sweep([acct("a1", 910)])
    assert _at(harness, code="910", category="institution") == 1
    assert [e.kind for e in received] == [EventKind.ENTERED]
    assert harness.tracker.subscriber_errors == 1
    assert any("subscriber failed" in r.getMessage() for r in caplog.records)


# -- pushed re-reads -------------------------------------------------------------------


async def test_apply_records_while_a_sweep_of_the_source_runs(tmp_path, acct, clock):
    h = Harness(tmp_path / "s.db", clock, batch_size=3)
    received = _recorder(h)
    keys = [f"k{i}" for i in range(12)]
    await h.sweep([acct(k, 185) for k in keys])
    clock.advance(DAY)
    session = await h.tracker.begin("fin", "finicity")
    # out of page order: rows k0..k2 are read ahead and wait for a later chunk
    await session.add([acct(k, 185) for k in keys[3:6]])
    received.clear()
    pushed_at = clock.now - 60  # newer than the attempt the sweep read
    await h.tracker.apply_records("fin", "finicity", [
        acct("k0", 185, attempt=pushed_at), acct("k1", 910, attempt=pushed_at)])
    assert [(e.kind, e.account_key) for e in received] == [
        (EventKind.LEFT, "k1"), (EventKind.ENTERED, "k1")]
    assert h.tracker.snapshot.sources["fin"].accounts == (
        ("4222", "FinBank", "185", "mfa", 11), ("4222", "FinBank", "910", "institution", 1))
    await session.add([acct(k, 185) for k in keys[:3] + keys[6:]])
    await session.finish(SweepReport(complete=True))
    rows = {k: (a, s) for k, a, s in h.store.connection.execute(
        "SELECT account_key, attempt_ts, mfa_streak FROM accounts")}
    assert rows["k0"] == (pushed_at, 2)  # the push's newer attempt stays, counted once
    assert rows["k2"] == (clock.now - 3600, 2)
    assert rows["k1"] == (pushed_at, 0)  # the page's older 185 attempt does not count
    assert as_dict(h.tracker.fleet("fin")) == as_dict(rebuilt(h.tracker))
    assert h.tracker.snapshot.sources["fin"].state_accounts == 12
    await h.tracker.close()


async def test_apply_records_never_drops_and_publishes(harness, acct, clock):
    await harness.sweep([acct("a1", 0), acct("a2", 0)])
    version = harness.tracker.snapshot.version
    await harness.tracker.apply_records("fin", "finicity", [acct("a2", 910)])
    assert harness.tracker.snapshot.version > version
    assert _at(harness, code="0", category="ok") == 1
    assert _at(harness, code="910", category="institution") == 1


# -- bounded cardinality ---------------------------------------------------------------


async def test_unknown_codes_beyond_the_cap_count_as_other(tmp_path, acct, clock, caplog):
    h = Harness(tmp_path / "s.db", clock, max_unknown_codes=2)
    codes = [str(9000 + i) for i in range(40)]
    await h.sweep([acct(f"a{i}", c) for i, c in enumerate(codes)])
    await h.sweep([acct(f"a{i}", c) for i, c in enumerate(codes)])
    assert _at(h, code="9000", category="unknown") == 1
    assert _at(h, code="9001", category="unknown") == 1
    assert _at(h, code="9002", category="unknown") is None
    assert _at(h, code="other", category="unknown") == 38
    assert h.value("openfinance_unknown_codes_total", source="fin", provider="finicity") == 80
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3  # two codes admitted, one "cap reached"
    assert len(h.tracker._unknown["fin"]) == 2  # what it remembers stays bounded
    h.store.close()

    again = Harness(tmp_path / "s.db", clock, max_unknown_codes=2)
    await again.tracker.load({"fin": "finicity"})
    await again.sweep([acct("b1", "9003"), acct("a0", "9000")], complete=False)
    assert _at(again, code="9000", category="unknown") == 1  # still a label after a restart
    assert _at(again, code="other", category="unknown") == 39
    again.store.close()
