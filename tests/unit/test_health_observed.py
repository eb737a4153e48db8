"""Sides, thresholds and the per-institution report built from a tracker snapshot."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from exporter.health.config import HealthConfig
from exporter.health.directory import InstitutionDirectory, InstitutionFacts
from exporter.health.report import build_report, declared_series, key_series, refresh_lag
from exporter.health.sides import DEFAULT_THRESHOLDS, SIDES, side_of
from exporter.sources.institution import DeclaredStatus
from exporter.status_codes import CATEGORIES
from exporter.tracker import AgeHistogram, Snapshot, SourceAggregate

NOW = 1_800_000_000.0
DAY = 86400.0


def ages(*ages_seconds: float) -> AgeHistogram:
    per_minute: dict[float, int] = {}
    for age in ages_seconds:
        minute = (NOW - age) // 60
        per_minute[minute] = per_minute.get(minute, 0) + 1
    return AgeHistogram.of(per_minute)


def source(name, provider, accounts, success=None, never=0) -> SourceAggregate:
    return SourceAggregate(source=name, provider=provider, accounts=tuple(accounts),
                           success=success or ages(), never_succeeded=never)


def snapshot(*sources: SourceAggregate) -> Snapshot:
    return Snapshot(version=7, sources={s.source: s for s in sources})


def test_every_category_has_exactly_one_side():
    listed = [c for cats in SIDES.values() for c in cats]
    assert sorted(listed) == sorted(CATEGORIES)


@pytest.mark.parametrize("category,side", [
    ("institution", "institution"), ("aggregator", "aggregator"), ("unknown", "aggregator"),
    ("mfa", "user"), ("oauth", "user"), ("credentials", "user"), ("pending", "none"),
    ("ok", "ok"), ("not-a-category", "aggregator"),
])
def test_only_category_institution_is_institution_side(category, side):
    assert side_of(category) == side


@pytest.mark.parametrize("ok,attempted,state", [
    (9, 9, "insufficient_data"), (0, 0, "insufficient_data"),
    (10, 10, "healthy"), (9, 10, "healthy"), (89, 100, "degraded"),
    (50, 100, "degraded"), (49, 100, "down"), (0, 10, "down"),
])
def test_state_thresholds(ok, attempted, state):
    assert DEFAULT_THRESHOLDS.state(ok, attempted) == state


def test_user_side_errors_do_not_make_an_institution_unhealthy():
    snap = snapshot(source("fin", "finicity", [
        ("4222", "Chase", "0", "ok", 10),
        ("4222", "Chase", "103", "credentials", 80),
        ("4222", "Chase", "185", "mfa", 10),
    ]))
    report = build_report(snap, InstitutionDirectory(), NOW)
    (entry,) = report.institutions[0].providers
    assert entry.state == "healthy"
    assert entry.breakdown == {"ok": 1.0, "institution": 0.0, "aggregator": 0.0}
    assert entry.user_share == pytest.approx(0.9)


def test_breakdown_shares_sum_to_one_and_pending_is_left_out():
    snap = snapshot(source("fin", "finicity", [
        ("1", "Bank", "0", "ok", 6), ("1", "Bank", "905", "institution", 3),
        ("1", "Bank", "996", "aggregator", 1), ("1", "Bank", "NONE", "pending", 50),
    ]))
    (entry,) = build_report(snap, InstitutionDirectory(), NOW).institutions[0].providers
    assert entry.counts == {"ok": 6, "institution": 3, "aggregator": 1, "user": 0, "none": 50}
    assert entry.breakdown == {"ok": 0.6, "institution": 0.3, "aggregator": 0.1}
    assert entry.state == "degraded"


def test_two_aggregators_of_one_bank_share_a_key_and_sit_side_by_side():
    directory = InstitutionDirectory()
    directory.record(InstitutionFacts("fin", "finicity", "4222", "Chase", "https://www.chase.com"))
    directory.record(InstitutionFacts("mx", "mx", "chase", "Chase Bank", "https://chase.com/"))
    snap = snapshot(
        source("fin", "finicity", [("4222", "Chase", "0", "ok", 20)]),
        source("mx", "mx", [("chase", "Chase Bank", "DEGRADED", "institution", 30),
                            ("chase", "Chase Bank", "CONNECTED", "ok", 10)]),
    )
    (inst,) = build_report(snap, directory, NOW).institutions
    assert inst.key == "chase.com"
    assert [(p.provider, p.state) for p in inst.providers] == [("finicity", "healthy"),
                                                               ("mx", "down")]
    assert inst.worst_state == "down"
    assert inst.name == "Chase Bank"


def test_worst_institutions_come_first():
    snap = snapshot(source("fin", "finicity", [
        ("1", "Fine", "0", "ok", 100),
        ("2", "Broken", "905", "institution", 20),
        ("3", "Tiny", "905", "institution", 2),
    ]))
    names = [i.name for i in build_report(snap, InstitutionDirectory(), NOW).institutions]
    assert names == ["Broken", "Fine", "Tiny"]


def test_folded_institutions_get_no_key_and_no_declared_status():
    snap = snapshot(source("fin", "finicity", [("other", "other", "0", "ok", 3)]))
    directory = InstitutionDirectory()
    (inst,) = build_report(snap, directory, NOW).institutions
    assert inst.key == "other"
    assert list(key_series(snap, directory)) == []
    assert list(declared_series(snap, directory)) == []


def test_declared_and_key_series_cover_institutions_with_accounts_only():
    directory = InstitutionDirectory()
    declared = DeclaredStatus((("institution", "online"), ("overall", "online"),
                               ("transAgg", "investigating")))
    directory.record(InstitutionFacts("fin", "finicity", "4222", "Chase",
                                      "https://www.chase.com", declared, NOW))
    directory.record(InstitutionFacts("fin", "finicity", "9", "Gone", None,
                                      DeclaredStatus((("institution", "offline"),)), NOW))
    snap = snapshot(source("fin", "finicity", [("4222", "Chase", "0", "ok", 1)]))
    assert list(declared_series(snap, directory)) == [
        ("fin", "finicity", "4222", "Chase", "institution", "online"),
        ("fin", "finicity", "4222", "Chase", "overall", "online"),
        ("fin", "finicity", "4222", "Chase", "transAgg", "investigating"),
    ]
    assert list(key_series(snap, directory)) == [("fin", "finicity", "4222", "chase.com")]


@pytest.mark.parametrize("ages_seconds,never,state", [
    ((3600, 3600, 3 * DAY), 0, "normal"),
    ((3600, 3 * DAY, 3 * DAY), 0, "delayed"),
    ((3600, 8 * DAY, 9 * DAY), 0, "stopped"),
    ((3600,), 2, "stopped"),
    ((), 0, "unknown"),
])
def test_refresh_lag_follows_the_median_age(ages_seconds, never, state):
    assert refresh_lag(ages(*ages_seconds), never, NOW).state == state


def test_refresh_lag_reports_the_median_age_to_the_minute():
    lag = refresh_lag(ages(3600, 2 * 3600, 5 * 3600), 0, NOW)
    assert abs(lag.median_age_seconds - 2 * 3600) < 60
    assert refresh_lag(ages(3600), 3, NOW).median_age_seconds is None


def test_refresh_state_agrees_with_the_exposed_histogram_buckets():
    """The rule compares bucket counts (ages.since) with half the total: so does the report."""
    hist = ages(*([DAY] * 5 + [3 * DAY] * 5))
    assert hist.since(NOW - 2 * DAY) == 5
    assert refresh_lag(hist, 0, NOW).state == "normal"   # 5 of 10 within 2d: median <= 2d
    assert refresh_lag(hist, 1, NOW).state == "delayed"  # 5 of 11


def test_health_config_defaults_are_the_rules_thresholds():
    assert HealthConfig().thresholds() == DEFAULT_THRESHOLDS


def test_health_config_rejects_down_above_degraded():
    with pytest.raises(ValidationError, match="down_below"):
        HealthConfig(down_below=0.95, degraded_below=0.9)
