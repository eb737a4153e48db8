"""The institution-health rules: generated from the same sides and thresholds as the report,
accepted by promtool, and tested around every threshold (alerts/tests/health/)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from exporter.health.sides import DEFAULT_THRESHOLDS, SIDES

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RULES = ALERTS / "health.rules.yml"
TESTS = sorted((ALERTS / "tests" / "health").glob("*.test.yml"))


def _health_rules():
    spec = importlib.util.spec_from_file_location("health_rules", ALERTS / "health_rules.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rules() -> dict[str, list[dict]]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {g["name"]: g["rules"] for g in groups}


def test_the_committed_rules_are_a_fresh_render():
    assert RULES.read_text(encoding="utf-8") == _health_rules().render_all(), (
        "run .venv/bin/python alerts/health_rules.py")


@pytest.mark.parametrize("args", [["check", "rules", "--lint=all", "--lint-fatal", str(RULES)],
                                  ["test", "rules", *map(str, TESTS)]],
                         ids=["check", "unit-tests"])
def test_promtool_accepts_and_tests_the_health_rules(args):
    assert TESTS
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_thresholds_are_the_reports_thresholds():
    params = {k: d for k, (d, _) in _health_rules().PARAMETERS.items()}
    t = DEFAULT_THRESHOLDS
    assert (params["health_min_accounts"], params["health_degraded_below"],
            params["health_down_below"]) == (t.min_accounts, t.degraded_below, t.down_below)
    assert (params["refresh_delayed_after_seconds"], params["refresh_stopped_after_seconds"]) == (
        t.refresh_delayed_after, t.refresh_stopped_after)
    states = {r["labels"]["state"]: r["expr"] for r in _rules()["openfinance.health.rules"]
              if r["record"] == "institution:openfinance_health_state"}
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
