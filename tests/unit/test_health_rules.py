"""The institution-health rules: generated from the same sides and thresholds as the report,
part of the committed rules file (promtool itself runs in tests/alerts), tested around every
threshold in alerts/tests/health.test.yml."""

from __future__ import annotations

from pathlib import Path

import yaml

from alerts import health_rules
from exporter.health.sides import DEFAULT_THRESHOLDS, SIDES

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "alerts" / "openfinance.rules.yml"


def _rules() -> dict[str, list[dict]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {g["name"]: g["rules"] for g in groups}


def test_rule_thresholds_are_the_reports_thresholds():
    params = {k: d for k, (d, _) in health_rules.PARAMETERS.items()}
    t = DEFAULT_THRESHOLDS
    assert (params["health_min_accounts"], params["health_degraded_below"],
            params["health_down_below"]) == (t.min_accounts, t.degraded_below, t.down_below)
    assert (params["refresh_delayed_after_seconds"], params["refresh_stopped_after_seconds"]) == (
        t.refresh_delayed_after, t.refresh_stopped_after)
    states = {r["labels"]["state"]: r["expr"] for r in _rules()["openfinance.health.rules"]
              if r["record"] == "institution_state:openfinance_health_state:info"}
    assert "ratio < 0.5" in states["down"] and "ratio < 0.9" in states["degraded"]
    assert all(">= 10" in expr for expr in states.values())


def test_each_side_sums_exactly_its_categories():
    sums = {r["labels"]["side"]: r["expr"] for r in _rules()["openfinance.health.rules"]
            if r["record"] == "institution_side:openfinance_accounts:sum"}
    assert set(sums) == set(SIDES)
    for side, categories in SIDES.items():
        assert f'category=~"{"|".join(categories)}"' in sums[side]


def test_outage_pages_are_held_back_during_declared_maintenance():
    alerts = {r["alert"]: r["expr"] for g in _rules().values() for r in g if "alert" in r}
    for name in ("OpenFinanceInstitutionOutage", "OpenFinanceInstitutionOutageSpike"):
        assert alerts[name].rstrip().endswith(
            'openfinance_institution_declared_status{product=~"institution|overall",'
            'status="maintenance"}')
        assert "unless on (source, provider, institution_id)" in alerts[name]
