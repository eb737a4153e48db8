"""Every panel of every shipped dashboard shows data from a real Prometheus 2.42 scraping the
agent on the sandbox, after a few nights with an outage, OTP suspects, transitions and fixable
accounts.

Queries are run the way Grafana runs them: variables substituted (``All``, then one real
institution picked from the metrics), range targets through ``/api/v1/query_range`` and
instant targets through ``/api/v1/query``. Panels in ``MAY_BE_EMPTY`` may be empty; every
query must still be accepted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.prom import (
    DASHBOARDS_DIR,
    MonitoredSandbox,
    PrometheusProc,
    PromQLError,
    dashboards_generator,
    render_rules,
)

pytestmark = pytest.mark.integration

generate = dashboards_generator()
DASHBOARD_FILES = sorted(p.name for p in DASHBOARDS_DIR.glob("*.json"))
# Small enough for a sweep of about a second; OTP shares raised so both providers have suspects.
_PROVIDER = {"units": 120, "institutions": 8, "otp": {"loop_share": 0.12, "relapse_share": 0.08}}
# Consent periods at two Finicity banks, as in the demo (the consent horizon panels).
SCENARIO: dict[str, Any] = {"finicity": {**_PROVIDER, "consent": {"enabled": True}},
                            "mx": _PROVIDER}
GRAFANA_REGEX_SPECIAL = set("$^*{}[]'+?.()|\\")
# Panels about events this run never produces: push and the repair loop are off here.
NOT_IN_THIS_RUN = generate.PUSH_AND_REPAIR


def grafana_regex(value: str) -> str:
    """A single variable value as Grafana's Prometheus datasource puts it into ``=~"…"``:
    regex metacharacters escaped, the backslash doubled for the PromQL string (plus quotes
    and newlines, which the sandbox's hostile institution names contain)."""
    regex = "".join("\\" + c if c in GRAFANA_REGEX_SPECIAL else c for c in value)
    return regex.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@dataclass
class Live:
    stack: MonitoredSandbox
    prom: PrometheusProc
    state: dict[str, Any]
    truth: dict[str, Any]
    started: float
    variable_sets: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("dashboards-live")
    # The short-duration rules make ALERTS{alertstate="firing"} exist for the alert panels.
    rules = render_rules(tmp / "openfinance.rules.yml", short=True)
    stack = MonitoredSandbox(tmp, SCENARIO, interval=1, rule_files=[rules])
    try:
        assert stack.sandbox is not None and stack.prometheus is not None
        state = stack.sandbox.state()
        # Through the outage's first night and until the OTP loops are suspects.
        nights = max(max(o["start_night"] for o in state["outages"]),
                     max(o["start_night"] for o in state["otp"]) + state["otp_streak"])
        state = stack.advance(nights - state["night"])
        stack.scraped_after_sweep()
        stack.prometheus.wait_for_evaluations(2)
        truth = stack.sandbox.truth()
        variable_sets: dict[str, dict[str, str]] = {"all": {}}
        for what, events in (("OTP institution", state["otp"]),
                             ("outage institution", state["outages"])):
            event = next(e for e in events if e["provider"] == "finicity")
            variable_sets[what] = {
                "source": grafana_regex("finicity-sandbox"), "provider": "finicity",
                "institution": grafana_regex(event["institution"]),
                "institution_id": grafana_regex(event["institution_id"]),
            }
            selector = ", ".join(f'{k}=~"{v}"' for k, v in variable_sets[what].items())
            assert stack.prometheus.query(f"openfinance_accounts{{{selector}}}"), (
                f"{what} {event['institution']!r}: the escaped selection matches no series")
        yield Live(stack, stack.prometheus, state, truth, stack.prometheus.started,
                   variable_sets)
    finally:
        stack.stop()
        print(f"\ndashboards live module: {time.monotonic() - started:.1f}s")


def _dashboard(name: str) -> dict[str, Any]:
    return json.loads((DASHBOARDS_DIR / name).read_text(encoding="utf-8"))


def _targets(panel: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in panel.get("targets", []) if t.get("expr")]


def without_fallback(expr: str) -> str:
    """``A`` of ``A or B`` at the top level: the query without its ``or 0 * …`` /
    ``or on () vector(0)`` / unjoined fallback, i.e. the series the panel is about."""
    depth, quoted = 0, False
    for i, c in enumerate(expr):
        if c == '"' and (i == 0 or expr[i - 1] != "\\"):
            quoted = not quoted
        elif not quoted and c in "([{":
            depth += 1
        elif not quoted and c in ")]}":
            depth -= 1
        elif not quoted and depth == 0 and expr.startswith(" or ", i):
            return expr[:i]
    return expr


def _run_target(live: Live, target: dict[str, Any], values: dict[str, str],
                main_only: bool = False) -> list[dict]:
    """The target's result as Grafana would get it: instant or over the test's whole range."""
    expr = generate.substitute_variables(target["expr"], values)
    if main_only:
        expr = without_fallback(expr)
    if target.get("instant") and not target.get("range"):
        return live.prom.query(expr)
    result = live.prom.query_range(expr, live.started, time.time(), 1)
    return [s for s in result if s.get("values")]


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_query_is_accepted_by_prometheus(live: Live, name: str) -> None:
    errors = []
    queries = generate.iter_queries(_dashboard(name))
    assert queries, f"{name} has no queries"
    for label, values in live.variable_sets.items():
        for title, expr in queries:
            concrete = generate.substitute_variables(expr, values)
            try:
                live.prom.query(concrete)
            except PromQLError as exc:
                errors.append(f"{title!r} ({label}): {exc}\n    {concrete}")
    assert not errors, f"{name}: Prometheus 2.42 rejects:\n" + "\n".join(errors)


@pytest.mark.parametrize("variables", ["all", "OTP institution", "outage institution"])
@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_panel_shows_data(live: Live, name: str, variables: str) -> None:
    values = live.variable_sets[variables]
    empty, checked = [], 0
    for panel in generate.iter_panels(_dashboard(name)):
        targets = _targets(panel)
        title = panel.get("title", "")
        if not targets or title in generate.MAY_BE_EMPTY:
            continue
        checked += 1
        if not any(_run_target(live, t, values) for t in targets):
            exprs = "\n    ".join(generate.substitute_variables(t["expr"], values)
                                  for t in targets)
            empty.append(f"{title!r} ({panel.get('type')}):\n    {exprs}")
    assert checked, f"{name}: no panel with a query"
    assert not empty, (f"{name} with {variables} ({values}): panels without data at night "
                       f"{live.state['night']}:\n" + "\n".join(empty)
                       + "\n" + live.stack.diagnostics(lines=15))


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_every_panel_shows_real_series_not_only_its_zero_fallback(live: Live, name: str) -> None:
    """With every variable at All, a panel's data comes from the series it is about: a
    misspelt metric or label behind ``or 0 * …`` would otherwise pass as "0"."""
    empty = []
    for panel in generate.iter_panels(_dashboard(name)):
        targets, title = _targets(panel), panel.get("title", "")
        if not targets or title in generate.MAY_BE_EMPTY | NOT_IN_THIS_RUN:
            continue
        if not any(_run_target(live, t, {}, main_only=True) for t in targets):
            empty.append(f"{title!r}:\n    " + "\n    ".join(
                without_fallback(generate.substitute_variables(t["expr"])) for t in targets))
    assert not empty, f"{name}: panels answered only by their fallback:\n" + "\n".join(empty)


@pytest.mark.parametrize("name", DASHBOARD_FILES)
def test_template_variables_list_real_values(live: Live, name: str) -> None:
    """``label_values(selector, label)`` variables: the label has values under ``All``."""
    missing = []
    for var, query in generate.iter_variable_queries(_dashboard(name)):
        assert query.startswith("label_values(") and query.endswith(")"), query
        selector, _, label = query[len("label_values("):-1].rpartition(",")
        selector = generate.substitute_variables(selector.strip())
        if not live.prom.label_values(label.strip(), selector):
            missing.append(f"${var}: {query}")
    assert not missing, f"{name}: variables with no values: {missing}"


def _panel_value(live: Live, dashboard: str, title: str) -> float:
    exprs = generate.queries_by_panel(_dashboard(dashboard))[title]
    result = live.prom.query(generate.substitute_variables(exprs[0]))
    assert len(result) == 1, f"{dashboard} {title!r}: {result}"
    return float(result[0]["value"][1])


def test_fleet_overview_headline_numbers_match_the_sandbox_truth(live: Live) -> None:
    """Beyond "not empty": the overview's stats equal the sandbox's ground truth."""
    truth, fleet = live.truth, "openfinance-fleet-overview.json"
    active_outages = [o for o in live.state["outages"] if o["active"]]
    expected = {
        "Accounts tracked": sum(truth["totals"].values()),
        "Fixable backlog": sum(r["fixable"] for r in truth["accounts"]),
        "OTP suspects": sum(s["accounts"] for s in truth["otp_suspects"]),
        "Institutions in outage": len(active_outages),
    }
    assert expected["OTP suspects"] > 0 and expected["Institutions in outage"] > 0, truth
    got = {title: _panel_value(live, fleet, title) for title in expected}
    assert got == expected, f"night {truth['night']}: dashboard {got}, truth {expected}"


def test_dashboard_files_are_the_generated_set() -> None:
    """The parametrisation above covers every dashboard the generator writes."""
    assert sorted(f"{uid}.json" for uid in generate.BUILDERS) == DASHBOARD_FILES
