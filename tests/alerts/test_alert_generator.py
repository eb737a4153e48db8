"""alerts/generate.py: committed outputs are current, parameters reach the rules, CLI modes."""

from __future__ import annotations

import re

import promql_parser
import pytest
import yaml

from alerts import generate
from tests.alerts.alerts_support import (
    GENERATOR,
    PARAMS_FILE,
    REPO,
    RULES_FILE,
    TEMPLATE_FILE,
    alerting_rules,
    load_rules,
    run,
)


@pytest.mark.parametrize("path", [RULES_FILE, TEMPLATE_FILE, PARAMS_FILE], ids=lambda p: p.name)
def test_committed_file_equals_a_fresh_render(path):
    expected = generate.committed_outputs()[path]
    assert path.read_text(encoding="utf-8") == expected, (
        f"{path.name} is out of date: run python -m alerts.generate"
    )


def test_check_flag_accepts_the_committed_files():
    result = run([*GENERATOR, "--check"], cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_params_file_holds_exactly_the_defaults():
    assert yaml.safe_load(PARAMS_FILE.read_text(encoding="utf-8")) == generate.DEFAULTS


def test_every_parameter_is_a_placeholder_in_the_template_and_nothing_else_is():
    template = TEMPLATE_FILE.read_text(encoding="utf-8")
    used = set(generate.PLACEHOLDER_RE.findall(template))
    assert used == set(generate.DEFAULTS)
    # Anything the chart's leftover check would take for a placeholder is spelt exactly.
    loose = re.findall(r"\[\[ *([A-Za-z0-9_]+) *\]\]", template)
    assert loose == generate.PLACEHOLDER_RE.findall(template)


def test_template_filled_with_defaults_as_text_equals_the_rules():
    """What the Helm chart does (text replace, then YAML) gives the committed rules."""
    template = TEMPLATE_FILE.read_text(encoding="utf-8")
    filled = generate.fill_template(template, generate.DEFAULTS)
    assert generate.PLACEHOLDER_RE.search(filled) is None
    assert yaml.safe_load(filled) == load_rules()


def test_template_filled_with_other_values_equals_a_render_with_them():
    params = {
        "outage_ratio": 0.35,
        "outage_min_accounts": 25,
        "outage_for": "20m",
        "spike_baseline_window": "12h",
        "stale_after_seconds": 86400,
        "exporter_job": "of-exporter",
        "runbook_base_url": "https://wiki.example.com/runbooks/openfinance",
    }
    template = TEMPLATE_FILE.read_text(encoding="utf-8")
    filled = generate.fill_template(template, {**generate.DEFAULTS, **params})
    assert yaml.safe_load(filled) == yaml.safe_load(generate.render(params))


def test_params_change_the_thresholds_and_durations_of_the_rules():
    doc = yaml.safe_load(generate.render({"outage_ratio": 0.35, "outage_for": "20m"}))
    outage = next(r for r in alerting_rules(doc) if r["alert"] == "OpenFinanceInstitutionOutage")
    assert "institution:openfinance_outage_accounts:ratio >= 0.35" in outage["expr"]
    assert outage["for"] == "20m"


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({"outage_ratoi": 0.3}, "outage_ratoi: unknown parameter"),
        ({"outage_for": "15 minutes"}, "outage_for"),
        ({"outage_ratio": "high"}, "outage_ratio"),
        ({"outage_min_accounts": -1}, "outage_min_accounts"),
        ({"grafana_base_url": "http://x/'"}, "grafana_base_url"),
    ],
)
def test_render_rejects_unknown_or_malformed_parameters(params, complaint):
    with pytest.raises(ValueError, match=complaint):
        generate.render(params)


def test_cli_writes_rules_with_params_from_a_file(tmp_path):
    params = tmp_path / "my.yml"
    params.write_text("outage_ratio: 0.5\nspike_for: 30m\n", encoding="utf-8")
    out = tmp_path / "rules.yml"
    result = run([*GENERATOR, "--params", str(params), "--out", str(out)])
    assert result.returncode == 0, result.stderr
    rules = {r["alert"]: r for r in alerting_rules(yaml.safe_load(out.read_text(encoding="utf-8")))}
    assert ">= 0.5" in rules["OpenFinanceInstitutionOutage"]["expr"]
    assert rules["OpenFinanceInstitutionOutageSpike"]["for"] == "30m"
    assert rules["OpenFinanceRepeatedOTP"]["for"] == generate.DEFAULTS["otp_for"]


def test_cli_rejects_a_bad_params_file_with_exit_code_2(tmp_path):
    params = tmp_path / "bad.yml"
    params.write_text("no_such_param: 1\n", encoding="utf-8")
    result = run([*GENERATOR, "--params", str(params), "--out",
                  str(tmp_path / "rules.yml")])
    assert result.returncode == 2
    assert "no_such_param" in result.stderr
    assert not (tmp_path / "rules.yml").exists()


def _seconds(duration: str) -> float:
    return 0.0 if duration in ("0s", "0m") else promql_parser.parse_duration(duration).total_seconds()


def test_short_durations_make_every_for_at_most_a_minute_and_windows_short(tmp_path):
    out = tmp_path / "short.yml"
    result = run([*GENERATOR, "--short-durations", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    doc = yaml.safe_load(out.read_text(encoding="utf-8"))
    for rule in alerting_rules(doc):
        assert _seconds(rule["for"]) <= 60, rule["alert"]
    merged = {**generate.DEFAULTS, **generate.SHORT_DURATIONS}
    for name, value in merged.items():
        if name.endswith(("_window", "_offset", "_resolution")):
            assert _seconds(value) <= 120, name
    assert merged["stale_after_seconds"] <= 120
    # Thresholds on counts and shares stay as they are.
    assert merged["outage_ratio"] == generate.DEFAULTS["outage_ratio"]
