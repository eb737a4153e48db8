"""The rules: promtool accepts and tests them, every alert is documented and linked, every
metric and label they use exists in the exporter's metric catalogue, thresholds are the
generator's defaults."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import promql_parser as pq
import pytest
import yaml

from alerts import generate
from exporter.metrics.catalog import series_labels
from exporter.status_codes import CATEGORIES
from tests.alerts.alerts_support import (
    ALERT_NAMES,
    GENERATOR,
    PROMTOOL_TESTS,
    RULES_FILE,
    RUNBOOKS,
    alerting_rules,
    load_rules,
    recording_rules,
    run,
)

DEFAULTS = generate.DEFAULTS
SEVERITIES = {"critical", "warning", "info"}
INSTITUTION_LABELS = {"source", "provider", "institution_id", "institution"}
# Labels Prometheus adds to every scraped series, and the series it makes itself.
TARGET_LABELS = frozenset({"job", "instance"})
PROMETHEUS_SERIES = {"up": TARGET_LABELS}

RULES = {r["alert"]: r for r in alerting_rules()}


# --- promtool -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_rules(tmp_path_factory):
    out = tmp_path_factory.mktemp("short") / "short.rules.yml"
    result = run([*GENERATOR, "--short-durations", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize("lint", [[], ["--lint=all", "--lint-fatal"]], ids=["check", "lint"])
def test_promtool_accepts_the_default_rules(lint):
    result = run(["promtool", "check", "rules", *lint, str(RULES_FILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(recording_rules()) + len(ALERT_NAMES)} rules found" in result.stdout


def test_promtool_accepts_the_short_duration_rules(short_rules):
    result = run(["promtool", "check", "rules", "--lint=all", "--lint-fatal", str(short_rules)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path):
    """The check above can fail: a rule with a bad expression is refused."""
    doc = load_rules()
    doc["groups"][1]["rules"][0]["expr"] = "institution:openfinance_outage_accounts:ratio >="
    bad = tmp_path / "bad.rules.yml"
    bad.write_text(yaml.safe_dump(doc), encoding="utf-8")
    assert run(["promtool", "check", "rules", str(bad)]).returncode != 0


def test_promtool_unit_tests_pass():
    assert PROMTOOL_TESTS, "no alerts/tests/*.test.yml"
    result = run(["promtool", "test", "rules", *map(str, PROMTOOL_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def _alert_tests() -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path in PROMTOOL_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert doc["rule_files"] == ["../openfinance.rules.yml"], f"{path.name} must test the default rules"
        for group in doc["tests"]:
            for t in group.get("alert_rule_test", []):
                out.append((f"{path.name}: {group['name']}", doc.get("evaluation_interval", "1m"), t))
    return out


def _duration(text: str) -> timedelta:
    if text in ("0s", "0m"):
        return timedelta(0)
    return timedelta(seconds=pq.parse_duration(text).total_seconds())


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_promtool_tests_see_each_alert_silent_one_evaluation_before_firing(alert):
    """For every alert some test group expects it silent at T - interval and firing at T."""
    by_group: dict[str, dict[timedelta, bool]] = {}
    intervals: dict[str, timedelta] = {}
    for group, interval, t in _alert_tests():
        if t["alertname"] != alert:
            continue
        by_group.setdefault(group, {})[_duration(t["eval_time"])] = bool(t.get("exp_alerts"))
        intervals[group] = _duration(interval)
    pairs = [
        (group, at)
        for group, times in by_group.items()
        for at, firing in times.items()
        if firing and times.get(at - intervals[group]) is False
    ]
    assert pairs, f"no promtool test has {alert} silent one evaluation before it fires"
    # The firing time is at least the alert's for: after the series start.
    for_ = _duration(RULES[alert]["for"])
    assert any(at >= for_ for _, at in pairs)


def test_a_healthy_fleet_test_expects_every_alert_silent():
    silent = {t["alertname"] for g, _, t in _alert_tests() if "healthy" in g and not t.get("exp_alerts")}
    assert silent == set(ALERT_NAMES)


# --- annotations, severities, links -----------------------------------------------------------

def _github_anchor(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def _runbook_sections() -> dict[str, str]:
    text = RUNBOOKS.read_text(encoding="utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {_github_anchor(parts[i]): parts[i + 1] for i in range(1, len(parts), 2)}


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_alert_has_for_severity_and_annotations(alert):
    rule = RULES[alert]
    assert rule.get("for"), "every alert needs a for:"
    assert rule["labels"]["severity"] in SEVERITIES
    ann = rule["annotations"]
    assert set(ann) >= {"summary", "description", "runbook_url", "dashboard_url"}
    assert "{{" not in ann["summary"], "summary must be static"
    assert "$value" in ann["description"] or "query" in ann["description"], "description needs numbers"
    assert "$labels." in ann["description"]


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_runbook_url_points_at_an_existing_section(alert):
    url = RULES[alert]["annotations"]["runbook_url"]
    base, _, anchor = url.partition("#")
    assert base == DEFAULTS["runbook_base_url"]
    assert base.endswith("docs/runbooks/README.md")
    sections = _runbook_sections()
    assert anchor in sections, f"docs/runbooks/README.md has no section #{anchor}"
    body = sections[anchor]
    for part in ("**What it means.**", "**Status codes involved.**", "**Confirm.**", "**What to do.**"):
        assert part in body, f"runbook section {alert} lacks {part}"


def test_runbook_has_no_section_for_an_alert_that_does_not_exist():
    assert set(_runbook_sections()) == {a.lower() for a in ALERT_NAMES}


def _output_labels(expr: str) -> frozenset[str]:
    return _Labels(_recorded_labels()).of(pq.parse(expr))


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_dashboard_url_links_the_matching_dashboard(alert):
    url = RULES[alert]["annotations"]["dashboard_url"]
    grafana = DEFAULTS["grafana_base_url"]
    labels = _output_labels(RULES[alert]["expr"])
    if labels >= INSTITUTION_LABELS:
        assert url == (
            f"{grafana}/d/openfinance-institution?var-source={{{{ $labels.source | urlquery }}}}"
            "&var-institution={{ $labels.institution | urlquery }}"
        )
    elif "category" in RULES[alert]["expr"]:
        assert url == f"{grafana}/d/openfinance-fleet-overview?var-source={{{{ $labels.source | urlquery }}}}"
    elif "source" in labels:
        assert url == f"{grafana}/d/openfinance-agent-health?var-source={{{{ $labels.source | urlquery }}}}"
    else:
        assert url == f"{grafana}/d/openfinance-agent-health"


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_templates_use_only_labels_the_alert_carries(alert):
    rule = RULES[alert]
    labels = _output_labels(rule["expr"])
    used = set()
    for text in rule["annotations"].values():
        used |= set(re.findall(r"\$labels\.(\w+)", text))
    assert used <= labels, f"{alert} templates use {used - labels}, not on the alert"


def test_pages_are_the_critical_alerts():
    critical = {a for a, r in RULES.items() if r["labels"]["severity"] == "critical"}
    assert critical == {
        "OpenFinanceInstitutionOutage",
        "OpenFinanceInstitutionOutageSpike",
        "OpenFinanceInstitutionOTPSurge",
        "OpenFinanceExporterDown",
        "OpenFinanceDataStale",
        "OpenFinanceUpstreamAuthFailing",
        "OpenFinanceUpstreamVersionRefused",
    }


# --- contract with the exporter's metric catalogue ------------------------------------------

CATALOG = series_labels()


def _recorded_labels() -> dict[str, frozenset[str]]:
    known: dict[str, frozenset[str]] = {}
    for rule in recording_rules():
        # Several rules may record one name, each adding its own static labels (side=…).
        labels = _Labels(known).of(pq.parse(rule["expr"])) | frozenset(rule.get("labels", {}))
        known[rule["record"]] = known.get(rule["record"], frozenset()) | labels
    return known


class _Labels:
    """Infers the labels an expression's result may carry, recording every unknown metric,
    label or category value it meets on the way."""

    def __init__(self, recorded: dict[str, frozenset[str]]):
        self.recorded = recorded
        self.problems: list[str] = []

    def of(self, node: Any) -> frozenset[str]:
        labels = self._of(node)
        assert not self.problems, self.problems
        return labels or frozenset()

    def _selector(self, vs: Any) -> frozenset[str]:
        name = vs.name
        matchers = vs.matchers.matchers
        if name is None:
            self.problems.append(f"selector without a metric name: {vs}")
            return frozenset()
        if name in CATALOG:
            labels = CATALOG[name] | TARGET_LABELS
        elif name in self.recorded:
            labels = self.recorded[name]
        elif name in PROMETHEUS_SERIES:
            labels = PROMETHEUS_SERIES[name]
        else:
            self.problems.append(f"{name} is not in exporter/metrics/catalog.py")
            return frozenset()
        for m in matchers:
            if m.name not in labels:
                self.problems.append(f"{name} has no label {m.name}")
            if m.name == "category" and m.op == pq.MatchOp.Equal and m.value not in CATEGORIES:
                self.problems.append(f"category {m.value!r} is not a catalog category")
        return labels

    def _of(self, node: Any) -> frozenset[str] | None:  # None: a scalar
        if isinstance(node, pq.VectorSelector):
            return self._selector(node)
        if isinstance(node, pq.MatrixSelector):
            return self._selector(node.vector_selector)
        if isinstance(node, pq.SubqueryExpr | pq.ParenExpr | pq.UnaryExpr):
            return self._of(node.expr)
        if isinstance(node, pq.NumberLiteral | pq.StringLiteral):
            return None
        if isinstance(node, pq.Call):
            args = [self._of(a) for a in node.args]
            if node.func.name == "time":
                return None
            if node.func.name == "absent":
                vs = node.args[0]
                return frozenset(m.name for m in vs.matchers.matchers if m.op == pq.MatchOp.Equal)
            vectors = [a for a in args if a is not None]
            return vectors[0] if vectors else None
        if isinstance(node, pq.AggregateExpr):
            inner = self._of(node.expr) or frozenset()
            if node.modifier is None:
                return frozenset()
            wanted = frozenset(node.modifier.labels)
            if node.modifier.type == pq.AggModifierType.By:
                if not wanted <= inner:
                    self.problems.append(f"{node}: by {sorted(wanted - inner)} not on the operand")
                return wanted
            return inner - wanted
        if isinstance(node, pq.BinaryExpr):
            lhs, rhs = self._of(node.lhs), self._of(node.rhs)
            if lhs is None or rhs is None:
                return lhs if rhs is None else rhs
            mod = node.modifier
            on = None
            if mod is not None and mod.matching is not None:
                names = frozenset(mod.matching.labels)
                for side in (lhs, rhs):
                    if not names <= side:
                        self.problems.append(f"{node}: matching on {sorted(names - side)} missing")
                if mod.matching.type == pq.LabelModifierType.Include:
                    on = names
            op = str(node.op)
            if op in ("and", "unless"):
                return lhs
            if op == "or":
                return lhs | rhs
            if mod is not None and mod.card == pq.VectorMatchCardinality.ManyToOne:
                return lhs | frozenset(mod.group_labels)  # group_left keeps the many side's
            if mod is not None and mod.card == pq.VectorMatchCardinality.OneToMany:
                return rhs | frozenset(mod.group_labels)
            return on if on is not None else lhs
        self.problems.append(f"unexpected node {type(node).__name__}")
        return frozenset()


@pytest.mark.parametrize(
    "rule", [*recording_rules(), *alerting_rules()], ids=lambda r: r.get("record") or r["alert"]
)
def test_rule_uses_only_catalogued_metrics_and_labels(rule):
    _Labels(_recorded_labels()).of(pq.parse(rule["expr"]))


def test_the_contract_check_catches_an_unknown_metric_and_label():
    checker = _Labels(_recorded_labels())
    with pytest.raises(AssertionError, match="openfinance_nonexistent"):
        checker.of(pq.parse("openfinance_nonexistent > 0"))
    checker = _Labels(_recorded_labels())
    with pytest.raises(AssertionError, match="no label customer_id"):
        checker.of(pq.parse('openfinance_accounts{customer_id="1"}'))
    checker = _Labels(_recorded_labels())
    with pytest.raises(AssertionError, match="not on the operand"):
        checker.of(pq.parse("sum by (code) (openfinance_otp_suspected_accounts)"))


def test_institution_recording_rules_keep_the_institution_labels():
    for name, labels in _recorded_labels().items():
        if name.startswith("institution:"):
            assert labels == INSTITUTION_LABELS, name


# --- thresholds are the generator's defaults --------------------------------------------------

# alert -> (its for: parameter, its threshold parameters, its window parameters)
PARAMETERS_OF = {
    "OpenFinanceInstitutionOutage": ("outage_for", ["outage_ratio", "outage_min_accounts"], []),
    "OpenFinanceInstitutionOutageSpike": (
        "spike_for", ["spike_ratio_increase", "spike_count_increase", "spike_min_accounts"], []),
    "OpenFinanceRepeatedOTP": ("otp_for", ["otp_min_accounts"], []),
    "OpenFinanceInstitutionOTPSurge": ("otp_surge_for", ["otp_surge_min_accounts", "otp_surge_ratio"], []),
    "OpenFinanceFixableBacklogHigh": (
        "fixable_backlog_for", ["fixable_backlog_min_accounts", "fixable_backlog_ratio"], []),
    "OpenFinanceConsentWave": (
        "consent_wave_for", ["consent_wave_ratio", "consent_wave_min_accounts"], []),
    "OpenFinanceExporterDown": ("exporter_down_for", [], []),
    "OpenFinanceSweepFailing": ("sweep_failing_for", [], ["sweep_failing_window"]),
    "OpenFinanceDataStale": ("stale_for", ["stale_after_seconds"], []),
    "OpenFinanceUpstreamAuthFailing": ("auth_failing_for", [], ["auth_failures_window"]),
    "OpenFinanceUpstreamRateLimited": (
        "rate_limited_for", ["rate_limited_min_requests"], ["rate_limited_window"]),
    "OpenFinanceUnknownStatusCode": ("unknown_for", ["unknown_min_accounts"], ["unknown_codes_window"]),
    "OpenFinanceUpstreamDrift": ("drift_for", [], ["drift_window"]),
    "OpenFinanceUpstreamVersionRefused": ("drift_for", [], ["drift_window"]),
    "OpenFinanceFixRequestsHeld": ("fix_held_for", [], []),
    "OpenFinanceFixRequestsDeadLettered": ("fix_dead_for", [], ["fix_dead_window"]),
    "OpenFinanceFixDeliveryFailing": ("fix_delivery_failing_for", [], ["fix_delivery_window"]),
    "OpenFinanceWebhookDeliveriesRejected": (
        "webhook_rejected_for", ["webhook_rejected_min"], ["webhook_rejected_window"]),
    "OpenFinanceWebhooksSilent": ("webhook_silent_for", [], ["webhook_silent_window"]),
    "OpenFinancePushEventsGivenUp": ("push_given_up_for", [], ["push_given_up_window"]),
    "OpenFinanceWebhookForwardFailing": ("forward_failing_for", [], ["forward_failing_window"]),
    # Institution health: the state's thresholds live in its recording rules.
    "OpenFinanceInstitutionDownWhileDeclaredOnline": ("declared_online_down_for", [], []),
    "OpenFinanceInstitutionOutageDuringMaintenance": (
        "outage_for", ["outage_ratio", "outage_min_accounts"], []),
}


def _walk(expr: str) -> list[Any]:
    nodes: list[Any] = []
    pq.walk(pq.parse(expr), pre_visit=lambda n: nodes.append(n))
    return nodes


def test_every_alert_is_in_the_parameter_table():
    assert set(PARAMETERS_OF) == set(ALERT_NAMES)


@pytest.mark.parametrize("alert", ALERT_NAMES)
def test_alert_thresholds_and_durations_equal_the_generator_defaults(alert):
    for_param, thresholds, windows = PARAMETERS_OF[alert]
    rule = RULES[alert]
    assert rule["for"] == DEFAULTS[for_param]
    nodes = _walk(rule["expr"])
    # 0 is structure ("any", "is down"), not a threshold.
    numbers = {n.val for n in nodes if isinstance(n, pq.NumberLiteral) and n.val != 0}
    assert numbers == {float(DEFAULTS[p]) for p in thresholds}
    ranges = {n.range.total_seconds() for n in nodes if isinstance(n, pq.MatrixSelector)}
    assert ranges == {_duration(DEFAULTS[p]).total_seconds() for p in windows}


def test_spike_baseline_uses_the_window_offset_and_resolution_defaults():
    for rule in recording_rules():
        if rule["record"].endswith("_baseline"):
            subqueries = [n for n in _walk(rule["expr"]) if isinstance(n, pq.SubqueryExpr)]
            assert len(subqueries) == 1, rule["record"]
            sq = subqueries[0]
            # (timedeltas from promql_parser may be unnormalised: compare seconds)
            assert sq.range.total_seconds() == _duration(DEFAULTS["spike_baseline_window"]).total_seconds()
            assert sq.step.total_seconds() == _duration(DEFAULTS["spike_baseline_resolution"]).total_seconds()
            assert sq.offset.total_seconds() == _duration(DEFAULTS["spike_baseline_offset"]).total_seconds()


def test_exporter_down_watches_the_configured_job():
    selectors = [n for n in _walk(RULES["OpenFinanceExporterDown"]["expr"]) if isinstance(n, pq.VectorSelector)]
    assert selectors
    for vs in selectors:
        assert [(m.name, m.value) for m in vs.matchers.matchers] == [("job", DEFAULTS["exporter_job"])]


def test_webhooks_silent_looks_back_exactly_its_window_for_a_configured_source():
    """The offset that proves the source took webhooks a whole window ago is that window."""
    nodes = _walk(RULES["OpenFinanceWebhooksSilent"]["expr"])
    offsets = {n.offset.total_seconds() for n in nodes
               if isinstance(n, pq.VectorSelector) and n.offset is not None}
    assert offsets == {_duration(DEFAULTS["webhook_silent_window"]).total_seconds()}
