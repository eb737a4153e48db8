"""Refresh lag per institution: one grouped read of the real state database, the median
rule, folding like the snapshot, and what the report, the JSON and the series show."""

from __future__ import annotations

import sqlite3

import pytest
from pydantic import ValidationError

from exporter.health.config import HealthConfig
from exporter.health.directory import InstitutionDirectory
from exporter.health.lag import AgeCounts, InstitutionAges, read_age_counts
from exporter.health.report import build_report, refresh_series
from exporter.health.sides import DEFAULT_THRESHOLDS
from exporter.state.database import StateDatabase

DAY = 86400.0


@pytest.mark.parametrize(("counts", "state"), [
    (AgeCounts(), "unknown"),
    (AgeCounts(normal=5, delayed=5), "normal"),      # exactly half within 2 days
    (AgeCounts(normal=4, delayed=6), "delayed"),
    (AgeCounts(normal=2, delayed=3, stopped=5), "delayed"),
    (AgeCounts(normal=2, delayed=2, stopped=6), "stopped"),
    (AgeCounts(normal=4, never=6), "stopped"),       # never succeeded counts as old
])
def test_the_median_account_decides(counts, state):
    assert counts.state() == state


async def _fleet(harness, acct, clock):
    # Bank 4222: 3 fresh, 1 two-day-old... Bank 5555: 2 stopped, 1 never. Bank 6666: 1 fresh.
    now = clock.now
    await harness.sweep([
        acct("a1", 0, inst="4222"), acct("a2", 0, inst="4222"), acct("a3", 0, inst="4222"),
        acct("a4", 103, inst="4222", success=now - 3 * DAY),
        acct("b1", 938, inst="5555", name="Slow Bank", success=now - 10 * DAY),
        acct("b2", 938, inst="5555", name="Slow Bank", success=now - 30 * DAY),
        acct("b3", 938, inst="5555", name="Slow Bank", success=None),
        acct("c1", 0, inst="6666", name="Tiny Bank"),
    ])


async def test_one_grouped_read_of_the_state_database(harness, acct, clock):
    await _fleet(harness, acct, clock)
    counts = read_age_counts(harness.store.database, clock.now)
    assert counts == {"fin": {
        "4222": AgeCounts(normal=3, delayed=1),
        "5555": AgeCounts(stopped=2, never=1),
        "6666": AgeCounts(normal=1)}}


async def test_configured_thresholds_move_the_split(harness, acct, clock):
    """health.refresh_delayed_after / refresh_stopped_after (the rules' parameters) are the
    bounds of the grouped read: 1 day / 20 days turn the 3-day-old account delayed → still
    delayed, the 10-day ones delayed and only the 30-day one stopped."""
    await _fleet(harness, acct, clock)
    config = HealthConfig(refresh_delayed_after="1d", refresh_stopped_after="20d")
    counts = read_age_counts(harness.store.database, clock.now, config.thresholds())
    assert counts["fin"]["5555"] == AgeCounts(delayed=1, stopped=1, never=1)
    assert counts["fin"]["4222"] == AgeCounts(normal=3, delayed=1)


@pytest.mark.parametrize("bad", [
    {"refresh_delayed_after": "7d", "refresh_stopped_after": "2d"},
    {"refresh_delayed_after": "3d", "refresh_stopped_after": "3d"},
    {"refresh_delayed_after": "0s"},
    {"refresh_stopped_after": "soon"},
])
def test_refresh_thresholds_are_checked(bad):
    with pytest.raises(ValidationError):
        HealthConfig(**bad)


async def test_the_report_and_series_show_each_institution_and_fold_the_small_ones(
        tmp_path, clock, acct):
    from tests.unit.conftest import Harness
    harness = Harness(tmp_path / "state.db", clock, institution_min_accounts=2)
    try:
        await _fleet(harness, acct, clock)
        ages = InstitutionAges(harness.store.database, DEFAULT_THRESHOLDS, clock)
        snap = harness.tracker.snapshot
        report = build_report(snap, InstitutionDirectory(), clock.now, DEFAULT_THRESHOLDS,
                              ages.counts)
        assert {p.refresh.scope for i in report.institutions for p in i.providers} == {"source"}
        assert await ages.run()
        report = build_report(snap, InstitutionDirectory(), clock.now, DEFAULT_THRESHOLDS,
                              ages.counts)
        lag = {p.institution_id: p.refresh.as_json()
               for i in report.institutions for p in i.providers}
        assert lag["4222"] == {"state": "normal", "median_age_seconds": None,
                               "scope": "institution", "accounts": {
                                   "normal": 3, "delayed": 1, "stopped": 0, "never": 0}}
        assert lag["5555"]["state"] == "stopped"
        assert lag["other"]["accounts"]["normal"] == 1, "Tiny Bank is folded under other"
        rows = {(r[2], r[4]): r[5] for r in refresh_series(snap, ages.counts)}
        assert rows[("5555", "stopped")] == 2 and rows[("5555", "never")] == 1
        assert rows[("other", "normal")] == 1 and ("6666", "normal") not in rows
    finally:
        harness.store.close()


async def test_a_failed_read_keeps_the_last_counts(tmp_path, harness, acct, clock):
    await _fleet(harness, acct, clock)
    ages = InstitutionAges(harness.store.database, DEFAULT_THRESHOLDS, clock)
    assert await ages.run()
    before = ages.counts("fin")
    ages.database = StateDatabase(tmp_path / "missing" / "state.db")
    assert not await ages.run()
    assert ages.counts("fin") == before and ages.failures == 1
    with pytest.raises(sqlite3.Error):
        read_age_counts(ages.database, clock.now)
