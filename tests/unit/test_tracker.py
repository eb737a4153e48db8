from __future__ import annotations

from exporter.records import clean_label
from tests.unit.conftest import DAY, Harness

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
