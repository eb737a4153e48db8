"""The per-institution repair funnel: requested, fixed and abandoned per institution and code,
folded like the fleet metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from exporter.metrics.observers import AgentMetrics
from exporter.remediation.loop import InstitutionLabels
from tests.unit.test_remediation_support import (
    DAY,
    Agg,
    Receiver,
    Recorder,
    Snap,
    broke,
    build_loop,
    feed,
    finished,
    healed,
)

FUNNEL = "openfinance_fix_institution_outcomes_total"


@pytest.fixture
def obs():
    return Recorder()


async def _loop(tmp_path, clock, obs, snap=None, **kw):
    loop = build_loop(tmp_path, clock, Receiver(), observer=obs, snap=snap, **kw)
    await finished(loop, "fin", True)
    return loop


async def _cycle(loop):
    await loop.evaluate()
    await loop.worker.run_once()


async def test_a_fixed_login_counts_requested_then_fixed_at_its_institution_and_code(
        tmp_path, clock, obs):
    loop = await _loop(tmp_path, clock, obs)
    await feed(loop, broke("103"))
    assert obs.funnel == [("fin", "finicity", "4222", "FinBank", "103", None)]
    await _cycle(loop)
    clock.advance(DAY)
    await feed(loop, healed(at=clock.now))
    assert obs.steps() == [("4222", "103", "requested"), ("4222", "103", "fixed")]
    await loop.stop()


async def test_an_abandoned_login_counts_at_the_code_its_request_was_made_for(
        tmp_path, clock, obs):
    loop = await _loop(tmp_path, clock, obs)
    await feed(loop, broke("103"))
    await _cycle(loop)
    await feed(loop, broke("185", at=clock.now))  # flaps to another fixable code
    clock.advance(8 * DAY)
    await _cycle(loop)
    assert obs.steps() == [("4222", "103", "requested"), ("4222", "103", "abandoned")]
    await loop.stop()


async def test_a_login_fixed_after_its_code_changed_counts_at_the_requests_code(
        tmp_path, clock, obs):
    loop = await _loop(tmp_path, clock, obs)
    await feed(loop, broke("103"))
    await _cycle(loop)
    await feed(loop, broke("185", at=clock.now))
    clock.advance(DAY)
    await feed(loop, healed(at=clock.now))
    assert obs.steps() == [("4222", "103", "requested"), ("4222", "103", "fixed")]
    await loop.stop()


async def test_the_requests_code_survives_a_restart(tmp_path, clock, obs):
    loop = await _loop(tmp_path, clock, obs)
    await feed(loop, broke("103"))
    await _cycle(loop)
    await feed(loop, broke("185", at=clock.now))
    await loop.stop()
    again = build_loop(tmp_path, clock, Receiver(), observer=obs)
    clock.advance(DAY)
    await feed(again, healed(at=clock.now))
    assert obs.steps("fixed") == [("4222", "103", "fixed")]
    await again.stop()


async def test_a_held_request_counts_as_requested(tmp_path, clock, obs):
    loop = await _loop(tmp_path, clock, obs, storm_min=1, storm_share=0.0)
    for i in range(3):
        await feed(loop, broke("103", login=f"l{i}", key=f"a{i}"))
    await loop.evaluate()
    assert obs.results("held") == 2
    assert obs.steps("requested") == [("4222", "103", "requested")] * 3
    await loop.stop()


async def test_an_institution_the_fleet_metrics_fold_counts_as_other(tmp_path, clock, obs):
    snap = Snap({"fin": Agg((("4222", "FinBank (renamed)", "0", "ok", 500),
                             ("other", "other", "0", "ok", 40)))})
    loop = await _loop(tmp_path, clock, obs, snap=snap)
    await feed(loop, broke("103", inst="4222", login="l1", key="a1"))
    await feed(loop, broke("103", inst="777", login="l2", key="a2"))
    await _cycle(loop)
    labels = sorted({(f[2], f[3]) for f in obs.funnel})
    assert labels == [("4222", "FinBank (renamed)"), ("other", "other")]
    await loop.stop()


def test_labels_stay_as_they_are_where_the_snapshot_folds_nothing():
    labels = InstitutionLabels(lambda: Snap({"fin": Agg((("4222", "FinBank", "0", "ok", 5),))}))
    assert labels("fin", "777", "Tiny CU") == ("777", "Tiny CU")  # not published yet
    assert labels("mx", "ally", "Ally") == ("ally", "Ally")  # source not in the snapshot
    assert labels("fin", "4222", "old name") == ("4222", "FinBank")


def test_labels_follow_a_new_snapshot():
    holder = {"snap": Snap({"fin": Agg((("other", "other", "0", "ok", 5),))})}
    labels = InstitutionLabels(lambda: holder["snap"])
    assert labels("fin", "777", "Tiny CU") == ("other", "other")
    holder["snap"] = Snap({"fin": Agg((("777", "Tiny CU", "0", "ok", 50),
                                       ("other", "other", "0", "ok", 5)))})
    assert labels("fin", "777", "Tiny CU") == ("777", "Tiny CU")


def test_agent_metrics_create_every_step_at_zero_then_count():
    registry = CollectorRegistry()
    m = AgentMetrics(registry)
    base = {"source": "fin", "provider": "finicity", "institution_id": "4222",
            "institution": "FinBank", "code": "103"}
    m.fix_institution("fin", "finicity", "4222", "FinBank", "103", None)
    for outcome in ("requested", "fixed", "abandoned"):
        assert registry.get_sample_value(FUNNEL, {**base, "outcome": outcome}) == 0
    m.fix_institution("fin", "finicity", "4222", "FinBank", "103", "requested")
    m.fix_institution("fin", "finicity", "4222", "FinBank", "103", "requested")
    m.fix_institution("fin", "finicity", "4222", "FinBank", "103", "fixed")
    assert registry.get_sample_value(FUNNEL, {**base, "outcome": "requested"}) == 2
    assert registry.get_sample_value(FUNNEL, {**base, "outcome": "fixed"}) == 1
    assert registry.get_sample_value(FUNNEL, {**base, "outcome": "abandoned"}) == 0
