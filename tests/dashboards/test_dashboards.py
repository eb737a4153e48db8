"""Contract tests for the generated Grafana dashboards (dashboards/*.json).

They check the committed JSON against the generator and Grafana's schema, parse every query,
and hold every metric and label a query uses to ``exporter/metrics/catalog.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import promql_parser
import pytest
import yaml

from alerts import generate as alerts_generate
from dashboards import generate
from exporter.metrics import catalog as metric_catalog

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = (Path(__file__).resolve().parents[2].parent
               / "shared/reference/grafana/dashboard.schema.json")
DASHBOARD_FILES = ("openfinance-fleet-overview.json", "openfinance-institution.json",
                   "openfinance-agent-health.json")
REQUIRED_VARIABLES = ("datasource", "source", "provider", "institution", "institution_id")

# Prometheus' own series that dashboards may query besides the exporter's.
PROMETHEUS_OWN_SERIES = {
    "ALERTS": frozenset({"alertname", "alertstate", "severity"}),
}

# Concrete values that look like what Grafana sends (a name with regex metacharacters escaped
# the way Grafana's Prometheus datasource does it, a multi-value selection, a range).
PLAUSIBLE_VALUES = {
    "source": "finicity-prod",
    "provider": "(finicity|mx)",
    "institution": "Bank of Example \\\\(US\\\\)",
    "institution_id": "101732",
    "window": "6h",
    "__rate_interval": "2m",
    "__interval": "15s",
    "__range": "6h",
    "__range_s": "21600",
}


ALERT_DEFAULTS = alerts_generate.DEFAULTS

SERIES_LABELS: dict[str, frozenset[str]] = {**metric_catalog.series_labels(),
                                            **PROMETHEUS_OWN_SERIES}
COMMITTED = {name: json.loads((ROOT / "dashboards" / name).read_text(encoding="utf-8"))
             for name in DASHBOARD_FILES}
GENERATED = generate.build_all()


def _all_queries() -> list[tuple[str, str, str]]:
    return [(name, title, expr) for name, data in COMMITTED.items()
            for title, expr in generate.iter_queries(data)]


def _query_id(q: tuple[str, str, str]) -> str:
    return f"{q[0].removesuffix('.json')}:{q[1]}"


ALL_QUERIES = _all_queries()


# --- Label contract: which labels each sub-expression carries --------------------------------
class ContractError(AssertionError):
    pass


def _selector_labels(vs: promql_parser.VectorSelector, problems: list[str]) -> frozenset[str]:
    name = vs.name
    matchers = list(vs.matchers.matchers) + [m for group in vs.matchers.or_matchers
                                             for m in group]
    if name is None:
        names = [m.value for m in matchers if m.name == "__name__"]
        name = names[0] if names else None
    known = SERIES_LABELS.get(name or "")
    if known is None:
        problems.append(f"metric {name!r} is not in exporter/metrics/catalog.py")
        return frozenset()
    for m in matchers:
        if m.name != "__name__" and m.name not in known:
            problems.append(f"{name} has no label {m.name!r} (has {sorted(known)})")
    return known


def _labels(node: object, problems: list[str]) -> frozenset[str]:
    """The labels a sub-expression's result may carry; problems are appended, not raised."""
    if isinstance(node, promql_parser.VectorSelector):
        return _selector_labels(node, problems)
    if isinstance(node, promql_parser.MatrixSelector):
        return _selector_labels(node.vector_selector, problems)
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr,
                         promql_parser.SubqueryExpr)):
        return _labels(node.expr, problems)
    if isinstance(node, (promql_parser.NumberLiteral, promql_parser.StringLiteral)):
        return frozenset()
    if isinstance(node, promql_parser.Call):
        args = [_labels(a, problems) for a in node.args]
        fn = node.func.name
        if fn == "histogram_quantile":
            if "le" not in args[1]:
                problems.append("histogram_quantile over a vector without 'le'")
            return args[1] - {"le"}
        if fn == "label_replace":
            return args[0] | {node.args[1].val}
        if fn == "label_join":
            return args[0] | {node.args[1].val}
        if fn in {"vector", "time", "scalar", "pi"}:
            return frozenset()
        return args[0] if args else frozenset()
    if isinstance(node, promql_parser.AggregateExpr):
        inner = _labels(node.expr, problems)
        op = str(node.op)
        mod = node.modifier
        grouping = frozenset(mod.labels) if mod is not None else frozenset()
        for label in sorted(grouping - inner):
            problems.append(f"{op} groups by {label!r}, which {node.expr} does not carry")
        if op in {"topk", "bottomk", "limitk", "limit_ratio"}:
            return inner
        if mod is None:
            out = frozenset()
        elif mod.type == promql_parser.AggModifierType.By:
            out = grouping
        else:
            out = inner - grouping
        if op == "count_values":
            out = out | {node.param.val}
        return out
    if isinstance(node, promql_parser.BinaryExpr):
        lhs, rhs = _labels(node.lhs, problems), _labels(node.rhs, problems)
        mod = node.modifier
        op = str(node.op)
        if mod is not None and mod.matching is not None:
            keys = frozenset(mod.matching.labels)
            if mod.matching.type == promql_parser.LabelModifierType.Include:  # on (…)
                for side, labels in (("left", lhs), ("right", rhs)):
                    for label in sorted(keys - labels):
                        problems.append(f"on ({label}) but the {side} side does not carry it")
            else:  # ignoring (…)
                for label in sorted(keys - (lhs | rhs)):
                    problems.append(f"ignoring ({label}) but neither side carries it")
        if mod is not None and mod.card == promql_parser.VectorMatchCardinality.ManyToOne:
            extra = frozenset(mod.group_labels)
            for label in sorted(extra - rhs):
                problems.append(f"group_left ({label}) but the right side does not carry it")
            return lhs | extra
        if mod is not None and mod.card == promql_parser.VectorMatchCardinality.OneToMany:
            extra = frozenset(mod.group_labels)
            for label in sorted(extra - lhs):
                problems.append(f"group_right ({label}) but the left side does not carry it")
            return rhs | extra
        if op in {"and", "unless"}:
            return lhs
        return lhs | rhs
    raise ContractError(f"unhandled PromQL node {type(node).__name__}: {node}")


def contract_problems(expr: str) -> list[str]:
    problems: list[str] = []
    _labels(promql_parser.parse(generate.substitute_variables(expr, PLAUSIBLE_VALUES)), problems)
    return problems


# --- The contract checker itself must catch what it is there for ------------------------------
@pytest.mark.parametrize("expr, fragment", [
    ("openfinance_acounts", "not in exporter/metrics/catalog.py"),
    ("openfinance_status_transitions", "not in exporter/metrics/catalog.py"),  # missing _total
    ("openfinance_broken_account_age_seconds_sum", "not in exporter/metrics/catalog.py"),
    ('openfinance_accounts{customer_id="1"}', "no label 'customer_id'"),
    ("sum by (institution) (openfinance_sweeps_total)", "groups by 'institution'"),
    ("histogram_quantile(0.9, sum by (source) "
     "(rate(openfinance_sweep_duration_seconds_bucket[5m])))", "without 'le'"),
    ("sum by (provider, code) (openfinance_accounts) * on (provider, code) "
     "group_left (label) openfinance_status_code_info", "group_left (label)"),
    ("sum by (code) (openfinance_accounts) * on (provider, code) "
     "group_left (name) openfinance_status_code_info", "on (provider) but the left side"),
    ('up{job="x"}', "not in exporter/metrics/catalog.py"),
])
def test_contract_checker_rejects_unknown_metrics_and_labels(expr, fragment):
    problems = contract_problems(expr)
    assert any(fragment in p for p in problems), problems


def test_contract_checker_accepts_a_catalog_join():
    expr = ('sum by (provider, code) (openfinance_accounts{source=~"$source"}) '
            "* on (provider, code) group_left (name) "
            "group by (provider, code, name) (openfinance_status_code_info) "
            'or on () vector(0)')
    assert contract_problems(expr) == []


# --- Files and generator -------------------------------------------------------------------------
def test_generator_builds_exactly_the_committed_files():
    on_disk = sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))
    assert on_disk == sorted(DASHBOARD_FILES)
    assert sorted(GENERATED) == sorted(DASHBOARD_FILES)


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_committed_json_equals_generator_output(name):
    committed_text = (ROOT / "dashboards" / name).read_text(encoding="utf-8")
    assert committed_text == generate.render(GENERATED[name]), (
        f"dashboards/{name} is out of date: run python -m dashboards.generate")


def test_check_mode_fails_on_a_stale_file(tmp_path):
    for name, data in GENERATED.items():
        (tmp_path / name).write_text(generate.render(data), encoding="utf-8")
    (tmp_path / generate.TEMPLATES).mkdir()
    for name, text in generate.build_templates().items():
        (tmp_path / generate.TEMPLATES / name).write_text(text, encoding="utf-8")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 0
    stale = tmp_path / DASHBOARD_FILES[0]
    stale.write_text(stale.read_text(encoding="utf-8").replace("OpenFinance", "Openfinance"),
                     encoding="utf-8")
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1


def test_check_mode_passes_on_the_committed_files():
    result = subprocess.run([sys.executable, "-m", "dashboards.generate", "--check"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_validates_against_grafana_schema(name):
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{e.json_path}: {e.message[:200]}" for e in validator.iter_errors(COMMITTED[name])]
    assert errors == []


def test_schema_validation_can_fail():
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    broken = json.loads(json.dumps(COMMITTED[DASHBOARD_FILES[0]]))
    broken["panels"][1]["gridPos"]["h"] = "tall"
    assert not jsonschema.Draft7Validator(schema).is_valid(broken)


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_uid_equals_file_name(name):
    assert COMMITTED[name]["uid"] == name.removesuffix(".json")


# --- Panels ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_panel_has_a_unit_a_description_and_queries(name):
    for panel in generate.iter_panels(COMMITTED[name]):
        title = panel.get("title")
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel.get("description"), f"{title}: no description"
        assert panel.get("targets"), f"{title}: no query"


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_panel_and_query_uses_the_datasource_variable(name):
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in generate.iter_panels(COMMITTED[name]):
        assert panel.get("datasource") == expected, panel.get("title")
        for target in panel["targets"]:
            assert target.get("datasource") == expected, (panel.get("title"), target)
    for var in COMMITTED[name]["templating"]["list"]:
        if var["type"] == "query":
            assert var.get("datasource") == expected, var["name"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panel_titles_are_unique(name):
    titles = [p["title"] for p in generate.iter_panels(COMMITTED[name])]
    assert len(titles) == len(set(titles))


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_panel_ids_and_ref_ids_are_unique(name):
    ids = [p["id"] for p in COMMITTED[name]["panels"]]
    ids += [p["id"] for row in COMMITTED[name]["panels"] for p in row.get("panels", [])]
    assert len(ids) == len(set(ids))
    for panel in generate.iter_panels(COMMITTED[name]):
        refs = [t["refId"] for t in panel["targets"]]
        assert all(refs) and len(refs) == len(set(refs)), panel["title"]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_dashboard_has_the_required_variables(name):
    variables = {v["name"]: v for v in COMMITTED[name]["templating"]["list"]}
    for required in REQUIRED_VARIABLES:
        assert required in variables, required
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for label in ("source", "provider", "institution", "institution_id"):
        var = variables[label]
        assert var["type"] == "query"
        # The variable lists values of the label of the same name.
        assert var["query"].rstrip().endswith(f", {label})"), var["query"]
        # includeAll makes Grafana regex-escape values (names such as "Bank (US)").
        assert var["includeAll"] and var["allValue"] == ".*"


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_defined_variable_is_known_to_the_substitution_helper(name):
    for var in COMMITTED[name]["templating"]["list"]:
        if var["type"] != "datasource":
            assert var["name"] in generate.DEFAULT_VARIABLE_VALUES, var["name"]


def test_fleet_dashboards_filter_by_institution_and_show_its_id():
    for name in ("openfinance-fleet-overview.json", "openfinance-institution.json"):
        exprs = [e for _, e in generate.iter_queries(COMMITTED[name])]
        assert any('institution=~"$institution"' in e and 'institution_id=~"$institution_id"'
                   in e for e in exprs), name
        tables = [p for p in generate.iter_panels(COMMITTED[name]) if p["type"] == "table"]
        assert any("institution_id" in json.dumps(p["transformations"]) for p in tables), name


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_table_transformations_name_fields_the_queries_return(name):
    """organize matches original field names (labels, Value or "Value #<refId>")."""
    for panel in generate.iter_panels(COMMITTED[name]):
        if panel["type"] != "table":
            continue
        targets = panel["targets"]
        fields = {"Time"}
        for t in targets:
            problems: list[str] = []
            fields |= _labels(promql_parser.parse(generate.substitute_variables(t["expr"])),
                              problems)
        fields |= {"Value"} if len(targets) == 1 else {f"Value #{t['refId']}" for t in targets}
        organize = [t["options"] for t in panel.get("transformations", [])
                    if t["id"] == "organize"]
        assert organize, panel["title"]
        for key in ("indexByName", "renameByName", "excludeByName"):
            unknown = set(organize[0].get(key, {})) - fields
            assert not unknown, (panel["title"], key, unknown)
        shown = {organize[0]["renameByName"].get(f, f) for f in fields}
        for sort in panel["options"].get("sortBy", []):
            assert sort["displayName"] in shown, (panel["title"], sort)


# --- Thresholds match the alert defaults ---------------------------------------------------------
def _threshold_values(panel: dict) -> set[float]:
    values = {s["value"] for s in panel["fieldConfig"]["defaults"].get("thresholds", {})
              .get("steps", []) if s["value"] is not None}
    for override in panel["fieldConfig"].get("overrides", []):
        for prop in override["properties"]:
            if prop["id"] == "thresholds":
                values |= {s["value"] for s in prop["value"]["steps"] if s["value"] is not None}
    return values


def _panel(name: str, title: str) -> dict:
    panels = [p for p in generate.iter_panels(COMMITTED[name]) if p["title"] == title]
    assert len(panels) == 1, (name, title)
    return panels[0]


@pytest.mark.parametrize("name, title, parameter", [
    ("openfinance-institution.json", "Outage share against the alert threshold", "outage_ratio"),
    ("openfinance-institution.json", "Outage share", "outage_ratio"),
    ("openfinance-institution.json", "Accounts in outage codes", "outage_min_accounts"),
    ("openfinance-institution.json", "Accounts in outage codes over time",
     "outage_min_accounts"),
    ("openfinance-fleet-overview.json", "Institutions ranked by outage share", "outage_ratio"),
    ("openfinance-fleet-overview.json", "Institutions ranked by outage share",
     "outage_min_accounts"),
    ("openfinance-fleet-overview.json", "Top institutions by outage share", "outage_ratio"),
    ("openfinance-fleet-overview.json", "OTP suspects", "otp_min_accounts"),
    ("openfinance-fleet-overview.json", "OTP suspects by institution", "otp_min_accounts"),
    ("openfinance-institution.json", "OTP suspects", "otp_min_accounts"),
    ("openfinance-agent-health.json", "Time since last successful sweep", "stale_after_seconds"),
    ("openfinance-agent-health.json", "Since last successful sweep", "stale_after_seconds"),
    ("openfinance-agent-health.json", "Rejected webhook deliveries", "webhook_rejected_min"),
])
def test_thresholds_match_the_alert_defaults(name, title, parameter):
    assert ALERT_DEFAULTS[parameter] in _threshold_values(_panel(name, title))


def test_outage_count_query_uses_both_alert_thresholds():
    outage = [e for t, e in generate.iter_queries(COMMITTED["openfinance-fleet-overview.json"])
              if t == "Institutions in outage"]
    assert len(outage) == 1
    assert f">= {ALERT_DEFAULTS['outage_ratio']} " in outage[0]
    assert f">= {ALERT_DEFAULTS['outage_min_accounts']}" in outage[0]


def test_outage_threshold_is_drawn_as_a_line():
    panel = _panel("openfinance-institution.json", "Outage share against the alert threshold")
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


def test_descriptions_tell_what_to_do_about_codes():
    text = json.dumps(COMMITTED["openfinance-fleet-overview.json"], ensure_ascii=False)
    for needle in ("Connect Fix", "103, 108, 109, 185, 187, 945–948", "support ticket",
                   "passcode on every", "931"):
        assert needle in text, needle


# --- Queries -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("query", ALL_QUERIES, ids=_query_id)
def test_query_parses(query):
    _, _, expr = query
    for values in (None, PLAUSIBLE_VALUES):
        promql_parser.parse(generate.substitute_variables(expr, values))


@pytest.mark.parametrize("query", ALL_QUERIES, ids=_query_id)
def test_query_uses_only_catalog_metrics_and_labels(query):
    _, _, expr = query
    assert contract_problems(expr) == []


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_variable_queries_use_only_catalog_metrics_and_labels(name):
    for var, query in generate.iter_variable_queries(COMMITTED[name]):
        assert query.startswith("label_values(") and query.endswith(")"), var
        selector, _, label = query[len("label_values("):-1].rpartition(",")
        problems: list[str] = []
        labels = _labels(promql_parser.parse(generate.substitute_variables(selector)), problems)
        assert problems == [], (var, problems)
        assert label.strip() in labels, (var, label)


def test_every_query_parses_with_prometheus_own_promtool(tmp_path):
    """promql-parser is newer than the Prometheus we ship against (2.42): let promtool judge."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: run scripts/install-tools.sh"
    rules = [{"record": f"dashboard:query_{i}:check",
              "expr": generate.substitute_variables(expr)}
             for i, (_, _, expr) in enumerate(ALL_QUERIES)]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}),
                    encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_substitution_replaces_every_grafana_variable():
    expr = 'rate(x{a=~"$source", b=~"${institution}", c="[[provider]]"}[$__rate_interval])'
    out = generate.substitute_variables(expr, {"source": "s", "institution": "i"})
    assert out == 'rate(x{a=~"s", b=~"i", c=".*"}[1m])'
    with pytest.raises(KeyError):
        generate.substitute_variables("x[$nope]")


def test_iter_queries_lists_every_target():
    data = COMMITTED["openfinance-agent-health.json"]
    targets = sum(len(p["targets"]) for p in generate.iter_panels(data))
    assert len(generate.iter_queries(data)) == targets
    assert all(title and expr for title, expr in generate.iter_queries(data))


def test_push_and_repair_panel_lists_name_existing_panels():
    """The live test skips these panels' real-series check (push and remediation are off
    there), so a renamed panel must not silently leave the list."""
    titles = {p["title"] for name in DASHBOARD_FILES for p in generate.iter_panels(COMMITTED[name])}
    assert titles >= generate.PUSH_AND_REPAIR
    assert titles >= generate.MAY_BE_EMPTY
