"""Generate the Prometheus recording and alerting rules from one table of parameters.

Every threshold and ``for:`` duration is a parameter in :data:`DEFAULTS`, so the committed
rules file, the Helm chart's template and users' own copies cannot drift apart.

    python -m alerts.generate                      # rewrite the three committed files
    python -m alerts.generate --check              # exit 1 if they differ from a fresh render
    python -m alerts.generate --params my.yml --out my.rules.yml
    python -m alerts.generate --short-durations --out e2e.rules.yml

(from the repository root; ``python alerts/generate.py`` works too). The institution-health
groups come from :mod:`alerts.health_rules`.

Committed outputs: ``openfinance.rules.yml`` (defaults), ``openfinance.rules.template.yml``
(each parameter replaced by ``[[ name ]]``, filled by the Helm chart with ``replace``) and
``params.yml`` (the defaults).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

if __package__:
    from alerts import health_rules
else:  # python alerts/generate.py
    import health_rules

HERE = Path(__file__).resolve().parent
RULES_FILE = HERE / "openfinance.rules.yml"
TEMPLATE_FILE = HERE / "openfinance.rules.template.yml"
PARAMS_FILE = HERE / "params.yml"

# name -> (default, help). Numbers are thresholds; strings ending in a unit are Prometheus
# durations; the rest are plain strings.
PARAMETERS: dict[str, tuple[Any, str]] = {
    "runbook_base_url": (
        "https://github.com/openfinance-exporter/openfinance-exporter/blob/main/docs/runbooks/README.md",
        "Runbook page; each alert links to <runbook_base_url>#<alert name in lower case>.",
    ),
    "grafana_base_url": (
        "http://localhost:3000",
        "Grafana root URL, without a trailing slash; used in dashboard_url.",
    ),
    "exporter_job": (
        "openfinance-exporter",
        "Value of the job label of the exporter's scrape target (OpenFinanceExporterDown).",
    ),
    # Institution outage.
    "outage_ratio": (0.2, "Share of an institution's accounts in category institution."),
    "outage_min_accounts": (10, "...and at least this many such accounts."),
    "outage_for": ("15m", "How long both must hold before OpenFinanceInstitutionOutage fires."),
    # Outage spike against the institution's own baseline.
    "spike_ratio_increase": (0.1, "Rise of the outage share above its baseline (0.1 = 10 points)."),
    "spike_count_increase": (100, "...or rise of the outage account count above its baseline."),
    "spike_min_accounts": (10, "Accounts in category institution needed before a spike can page."),
    "spike_baseline_window": ("1d", "Window the baseline averages over."),
    "spike_baseline_offset": ("1h", "How far back the baseline window ends (keeps a spike out of it)."),
    "spike_baseline_resolution": ("5m", "Step of the baseline subquery (cost: window / step samples)."),
    "spike_for": ("10m", "How long the rise must hold before OpenFinanceInstitutionOutageSpike fires."),
    # One-time passcodes.
    "otp_min_accounts": (1, "Accounts in a repeated-185 (OTP) loop at one institution."),
    "otp_for": ("30m", "for: of OpenFinanceRepeatedOTP."),
    "otp_surge_min_accounts": (20, "Accounts in an OTP loop at one institution for a surge..."),
    "otp_surge_ratio": (0.05, "...that are also at least this share of its accounts."),
    "otp_surge_for": ("30m", "for: of OpenFinanceInstitutionOTPSurge."),
    # Fixable backlog.
    "fixable_backlog_min_accounts": (50, "Fixable accounts (Connect Fix) at one institution..."),
    "fixable_backlog_ratio": (0.1, "...that are also at least this share of its accounts."),
    "fixable_backlog_for": ("1h", "for: of OpenFinanceFixableBacklogHigh."),
    # Consent horizon (Finicity OAuth consent ends).
    "consent_wave_ratio": (0.1, "Share of an institution's accounts whose consent ends within 7 days..."),
    "consent_wave_min_accounts": (10, "...and at least this many such accounts."),
    "consent_wave_for": ("1h", "for: of OpenFinanceConsentWave."),
    # Agent health.
    "exporter_down_for": ("5m", "for: of OpenFinanceExporterDown."),
    "sweep_failing_window": ("2h", "Window with failed sweeps and no successful one; >= 2 sweep intervals."),
    "sweep_failing_for": ("15m", "for: of OpenFinanceSweepFailing."),
    "stale_after_seconds": (7200, "Age of the last successful sweep that counts as stale, in seconds."),
    "stale_for": ("10m", "for: of OpenFinanceDataStale."),
    "auth_failures_window": ("15m", "Window in which any refused login counts."),
    "auth_failing_for": ("5m", "for: of OpenFinanceUpstreamAuthFailing."),
    "rate_limited_window": ("15m", "Window over which rate-limited requests are counted."),
    "rate_limited_min_requests": (10, "Rate-limited (429) requests in that window."),
    "rate_limited_for": ("15m", "for: of OpenFinanceUpstreamRateLimited."),
    "unknown_codes_window": ("1h", "Window in which any record with an unknown code counts."),
    "unknown_min_accounts": (1, "Accounts now at a code missing from the catalog."),
    "unknown_for": ("15m", "for: of OpenFinanceUnknownStatusCode."),
    "drift_window": ("2h", "Window in which any upstream drift counts; >= 2 sweep intervals."),
    "drift_for": ("5m", "for: of OpenFinanceUpstreamDrift and OpenFinanceUpstreamVersionRefused."),
    # Institution health (alerts/health_rules.py).
    **health_rules.PARAMETERS,
    # The repair loop (remediation).
    "fix_held_for": ("5m", "for: of OpenFinanceFixRequestsHeld (storm guard holding requests)."),
    "fix_dead_window": ("1h", "Window in which any dead-lettered fix request counts."),
    "fix_dead_for": ("0s", "for: of OpenFinanceFixRequestsDeadLettered."),
    "fix_delivery_window": ("30m", "Window with retried fix requests and none delivered."),
    "fix_delivery_failing_for": ("15m", "for: of OpenFinanceFixDeliveryFailing."),
    # Push (aggregator webhooks).
    "webhook_rejected_window": ("15m", "Window over which refused webhook deliveries are counted."),
    "webhook_rejected_min": (5, "Deliveries refused for a bad signature or wrong credentials in that window."),
    "webhook_rejected_for": ("5m", "for: of OpenFinanceWebhookDeliveriesRejected."),
    "webhook_silent_window": ("6h", "A webhook source with no verified delivery for this long is silent."),
    "webhook_silent_for": ("15m", "for: of OpenFinanceWebhooksSilent."),
    "push_given_up_window": ("1h", "Window in which any webhook event given up (not applied) counts."),
    "push_given_up_for": ("0s", "for: of OpenFinancePushEventsGivenUp."),
    "forward_failing_window": ("5m", "Window in which deliveries not forwarded to their owner's shard count; failures that stop within (for - window) stay quiet."),
    "forward_failing_for": ("10m", "for: of OpenFinanceWebhookForwardFailing (a rolling update's restarts stay below it)."),
}

DEFAULTS: dict[str, Any] = {name: default for name, (default, _) in PARAMETERS.items()}

# Every ``for:`` 0s-1m and every window short: for the end-to-end test, where the sandbox
# changes state within seconds and Prometheus evaluates every second.
SHORT_DURATIONS: dict[str, Any] = {
    "outage_for": "0s",
    "spike_baseline_window": "2m",
    "spike_baseline_offset": "1m",
    "spike_baseline_resolution": "5s",
    "spike_for": "0s",
    "otp_for": "0s",
    "otp_surge_for": "0s",
    "fixable_backlog_for": "0s",
    "consent_wave_for": "0s",
    "exporter_down_for": "15s",
    "sweep_failing_window": "1m",
    "sweep_failing_for": "0s",
    "stale_after_seconds": 60,
    "stale_for": "0s",
    "auth_failures_window": "1m",
    "auth_failing_for": "0s",
    "rate_limited_window": "1m",
    "rate_limited_for": "0s",
    "unknown_codes_window": "1m",
    "unknown_for": "0s",
    "drift_window": "1m",
    "drift_for": "0s",
    **health_rules.SHORT_DURATIONS,
    "fix_held_for": "0s",
    "fix_dead_window": "1m",
    "fix_dead_for": "0s",
    "fix_delivery_window": "1m",
    "fix_delivery_failing_for": "0s",
    "webhook_rejected_window": "1m",
    "webhook_rejected_for": "0s",
    "webhook_silent_window": "2m",
    "webhook_silent_for": "0s",
    "push_given_up_window": "1m",
    "push_given_up_for": "0s",
    "forward_failing_window": "1m",
    "forward_failing_for": "0s",
}

PLACEHOLDER_RE = re.compile(r"\[\[ ([a-z0-9_]+) \]\]")
_DURATION_RE = re.compile(r"^(?:\d+(?:ms|[smhdwy]))+$")

INSTITUTION = "source, provider, institution_id, institution"

DASHBOARD_INSTITUTION = "openfinance-institution"
DASHBOARD_FLEET = "openfinance-fleet-overview"
DASHBOARD_AGENT = "openfinance-agent-health"


def validate(params: dict[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``params``; ValueError listing every unknown or ill-typed one."""
    problems = [f"{k}: unknown parameter" for k in params if k not in DEFAULTS]
    merged = {**DEFAULTS, **{k: v for k, v in params.items() if k in DEFAULTS}}
    for name, value in merged.items():
        default = DEFAULTS[name]
        if isinstance(default, str) and _DURATION_RE.match(default):
            if not (isinstance(value, str) and _DURATION_RE.match(value)):
                problems.append(f"{name}: {value!r} is not a Prometheus duration such as 15m")
        elif isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                problems.append(f"{name}: {value!r} is not a number >= 0")
        elif not isinstance(value, str) or not value or any(c in value for c in "'\"\n"):
            problems.append(f"{name}: {value!r} must be a non-empty string without quotes")
    if problems:
        raise ValueError("; ".join(problems))
    return merged


class _Values:
    """Parameter values as the text that goes into the rules (or ``[[ name ]]`` placeholders)."""

    def __init__(self, params: dict[str, Any] | None) -> None:
        self._params = params  # None: render placeholders

    def __getattr__(self, name: str) -> str:
        if name not in DEFAULTS:
            raise AttributeError(name)
        if self._params is None:
            return f"[[ {name} ]]"
        value = self._params[name]
        if isinstance(value, float):
            return str(int(value)) if value.is_integer() else repr(value)
        return str(value)


class _Expr(str):
    """A PromQL expression, emitted as a YAML literal block so text substitution stays safe."""


def _represent_expr(dumper: yaml.SafeDumper, data: _Expr) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style="|")


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Expr, _represent_expr)


def _count(metric: str, matchers: str = "") -> str:
    """Go template: this institution's value of a recorded series (with ``matchers``, e.g.
    ``,within="7d"``), as an integer."""
    return (
        "{{ with printf `" + metric + "{source=%q,institution_id=%q" + matchers + "}` $labels.source "
        "$labels.institution_id | query }}{{ . | first | value | printf \"%.0f\" }}{{ end }}"
    )


def _percent(metric: str) -> str:
    """Go template: this institution's value of a recorded ratio, as a percentage."""
    return (
        "{{ with printf `" + metric + "{source=%q,institution_id=%q}` $labels.source "
        "$labels.institution_id | query }}{{ . | first | value | humanizePercentage }}{{ end }}"
    )


def _on_target() -> str:
    """Go template: the source and, with several replicas (shards), which one."""
    return "{{ $labels.source }} on {{ $labels.instance }}"


def _where() -> str:
    return "{{ $labels.institution }} (institution_id {{ $labels.institution_id }}, source {{ $labels.source }})"


def _alert(
    v: _Values,
    name: str,
    expr: str,
    for_: str,
    severity: str,
    summary: str,
    description: str,
    dashboard: str,
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": _Expr(expr.strip() + "\n"),
        "for": for_,
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": f"{v.runbook_base_url}#{name.lower()}",
            "dashboard_url": dashboard,
        },
    }


def _record(name: str, expr: str) -> dict[str, Any]:
    return {"record": name, "expr": _Expr(expr.strip() + "\n")}


def _institution_dashboard(v: _Values) -> str:
    return (
        f"{v.grafana_base_url}/d/{DASHBOARD_INSTITUTION}"
        "?var-source={{ $labels.source | urlquery }}&var-institution={{ $labels.institution | urlquery }}"
    )


def _source_dashboard(v: _Values, uid: str) -> str:
    """A dashboard filtered to the alert's source."""
    return f"{v.grafana_base_url}/d/{uid}?var-source={{{{ $labels.source | urlquery }}}}"


_ON_INSTITUTION = f"on ({INSTITUTION})"


def _recording_rules(v: _Values) -> list[dict[str, Any]]:
    """Group openfinance.institution.rules: per-institution sums, ratios and baselines."""
    return [
        _record(
            "institution:openfinance_accounts:sum",
            f"sum by ({INSTITUTION}) (openfinance_accounts)",
        ),
        # 0 rather than no series when nothing is down, so the spike baseline exists.
        _record(
            "institution:openfinance_outage_accounts:sum",
            f"""
sum by ({INSTITUTION}) (openfinance_accounts{{category="institution"}})
or
0 * institution:openfinance_accounts:sum
""",
        ),
        _record(
            "institution:openfinance_outage_accounts:ratio",
            """
institution:openfinance_outage_accounts:sum
/
(institution:openfinance_accounts:sum > 0)
""",
        ),
        _record(
            "institution:openfinance_outage_accounts:ratio_baseline",
            f"avg_over_time(institution:openfinance_outage_accounts:ratio[{v.spike_baseline_window}:{v.spike_baseline_resolution}] "
            f"offset {v.spike_baseline_offset})",
        ),
        _record(
            "institution:openfinance_outage_accounts:sum_baseline",
            f"avg_over_time(institution:openfinance_outage_accounts:sum[{v.spike_baseline_window}:{v.spike_baseline_resolution}] "
            f"offset {v.spike_baseline_offset})",
        ),
        _record(
            "institution:openfinance_otp_suspected_accounts:sum",
            f"sum by ({INSTITUTION}) (openfinance_otp_suspected_accounts)",
        ),
        _record(
            "institution:openfinance_otp_suspected_accounts:ratio",
            """
institution:openfinance_otp_suspected_accounts:sum
/
(institution:openfinance_accounts:sum > 0)
""",
        ),
        _record(
            "institution:openfinance_fixable_accounts:sum",
            f"sum by ({INSTITUTION}) (openfinance_fixable_accounts)",
        ),
        _record(
            "institution:openfinance_fixable_accounts:ratio",
            """
institution:openfinance_fixable_accounts:sum
/
(institution:openfinance_accounts:sum > 0)
""",
        ),
        _record(
            "institution_within:openfinance_consent_expiring_accounts:sum",
            f"sum by ({INSTITUTION}, within) (openfinance_consent_expiring_accounts)",
        ),
        _record(
            "institution_within:openfinance_consent_expiring_accounts:ratio",
            f"""
institution_within:openfinance_consent_expiring_accounts:sum
/ on ({INSTITUTION}) group_left()
(institution:openfinance_accounts:sum > 0)
""",
        ),
        _record(
            "source_category:openfinance_accounts:sum",
            "sum by (source, provider, category) (openfinance_accounts)",
        ),
    ]


def _institution_alerts(v: _Values) -> list[dict[str, Any]]:
    """Group openfinance.institution.alerts: outages, OTP loops, the fixable backlog."""
    inst_dash, on = _institution_dashboard(v), _ON_INSTITUTION
    return [
        _alert(
            v,
            "OpenFinanceInstitutionOutage",
            health_rules.unless_declared_maintenance(f"""
institution:openfinance_outage_accounts:ratio >= {v.outage_ratio}
and {on}
institution:openfinance_outage_accounts:sum >= {v.outage_min_accounts}
"""),
            v.outage_for,
            "critical",
            "Many accounts at one institution fail with outage or maintenance codes.",
            f"{{{{ $value | humanizePercentage }}}} of the accounts at {_where()}, "
            f"{_count('institution:openfinance_outage_accounts:sum')} of "
            f"{_count('institution:openfinance_accounts:sum')}, are in category institution "
            "(outage or maintenance: Finicity 102, 320, 580, 900-916; MX DEGRADED, DISCONNECTED, FAILED). "
            f"Threshold: {{{{ {v.outage_ratio} | humanizePercentage }}}} and {v.outage_min_accounts} accounts "
            f"for {v.outage_for}.",
            inst_dash,
        ),
        _alert(
            v,
            "OpenFinanceInstitutionOutageSpike",
            health_rules.unless_declared_maintenance(f"""
institution:openfinance_outage_accounts:ratio
and {on}
(
    institution:openfinance_outage_accounts:ratio - institution:openfinance_outage_accounts:ratio_baseline
  >=
    {v.spike_ratio_increase}
  or
    institution:openfinance_outage_accounts:sum - institution:openfinance_outage_accounts:sum_baseline
  >=
    {v.spike_count_increase}
)
and {on}
institution:openfinance_outage_accounts:sum >= {v.spike_min_accounts}
"""),
            v.spike_for,
            "critical",
            "Outage codes at one institution jumped above its own baseline.",
            f"Accounts in category institution at {_where()} rose to {{{{ $value | humanizePercentage }}}} "
            f"({_count('institution:openfinance_outage_accounts:sum')} accounts), against a baseline of "
            f"{_percent('institution:openfinance_outage_accounts:ratio_baseline')} "
            f"({_count('institution:openfinance_outage_accounts:sum_baseline')} accounts) averaged over "
            f"{v.spike_baseline_window} up to {v.spike_baseline_offset} ago.",
            inst_dash,
        ),
        _alert(
            v,
            "OpenFinanceRepeatedOTP",
            f"institution:openfinance_otp_suspected_accounts:sum >= {v.otp_min_accounts}",
            v.otp_for,
            "warning",
            "Accounts at an institution are stuck in a one-time-passcode loop.",
            f"Accounts at {_where()} in a one-time-passcode loop: {{{{ $value | printf \"%.0f\" }}}}. "
            "Their last aggregation attempts all ended in MFA (Finicity 185, MX CHALLENGED), or they fell "
            "back into it after a fix: the bank asks these users for a passcode on every refresh.",
            inst_dash,
        ),
        _alert(
            v,
            "OpenFinanceInstitutionOTPSurge",
            f"""
institution:openfinance_otp_suspected_accounts:sum >= {v.otp_surge_min_accounts}
and {on}
institution:openfinance_otp_suspected_accounts:ratio >= {v.otp_surge_ratio}
""",
            v.otp_surge_for,
            "critical",
            "Many accounts at one institution are stuck in a one-time-passcode loop.",
            f"{{{{ $value | printf \"%.0f\" }}}} accounts at {_where()}, "
            f"{_percent('institution:openfinance_otp_suspected_accounts:ratio')} of them, ask for a "
            "one-time passcode on every aggregation (Finicity 185/931, MX CHALLENGED): the institution "
            "has probably changed its MFA. Threshold: "
            f"{v.otp_surge_min_accounts} accounts and {{{{ {v.otp_surge_ratio} | humanizePercentage }}}}.",
            inst_dash,
        ),
        _alert(
            v,
            "OpenFinanceFixableBacklogHigh",
            f"""
institution:openfinance_fixable_accounts:sum >= {v.fixable_backlog_min_accounts}
and {on}
institution:openfinance_fixable_accounts:ratio >= {v.fixable_backlog_ratio}
""",
            v.fixable_backlog_for,
            "info",
            "Many accounts at one institution wait for their users to repair the connection.",
            f"{{{{ $value | printf \"%.0f\" }}}} accounts at {_where()}, "
            f"{_percent('institution:openfinance_fixable_accounts:ratio')} of them, are at a code that "
            "Connect Fix resolves (Finicity 103, 108, 109, 185, 187, 945-948; MX credential and MFA "
            "statuses) and have been for a while.",
            inst_dash,
        ),
        _alert(
            v,
            "OpenFinanceConsentWave",
            f"""
institution_within:openfinance_consent_expiring_accounts:ratio{{within="7d"}} >= {v.consent_wave_ratio}
and on ({INSTITUTION}, within)
institution_within:openfinance_consent_expiring_accounts:sum{{within="7d"}} >= {v.consent_wave_min_accounts}
""",
            v.consent_wave_for,
            "warning",
            "Many users at one institution must renew their consent within a week.",
            f"{{{{ $value | humanizePercentage }}}} of the accounts at {_where()}, "
            + _count("institution_within:openfinance_consent_expiring_accounts:sum", ',within="7d"')
            + " of "
            f"{_count('institution:openfinance_accounts:sum')}, reach the end of their OAuth consent "
            "(Finicity authorizationEndDate) within 7 days; unrenewed, they break with 947. "
            f"Threshold: {{{{ {v.consent_wave_ratio} | humanizePercentage }}}} and "
            f"{v.consent_wave_min_accounts} accounts.",
            inst_dash,
        ),
    ]


def _agent_alerts(v: _Values) -> list[dict[str, Any]]:
    """Group openfinance.agent.alerts: the exporter's own health and its upstream access."""
    agent_dash = _source_dashboard(v, DASHBOARD_AGENT)
    fleet_dash = _source_dashboard(v, DASHBOARD_FLEET)
    return [
        _alert(
            v,
            "OpenFinanceExporterDown",
            f"""
up{{job="{v.exporter_job}"}} == 0
or
absent(up{{job="{v.exporter_job}"}})
""",
            v.exporter_down_for,
            "critical",
            "The openfinance-exporter cannot be scraped.",
            "{{ if $labels.instance }}Prometheus cannot scrape the exporter at {{ $labels.instance }} "
            "(job {{ $labels.job }}){{ else }}Prometheus has no target with job {{ $labels.job }}{{ end }}; "
            "targets of that job up: {{ with printf `sum(up{job=%q})` $labels.job | query }}"
            "{{ . | first | value | printf \"%.0f\" }}{{ else }}0{{ end }} of "
            "{{ with printf `count(up{job=%q})` $labels.job | query }}{{ . | first | value | printf \"%.0f\" }}"
            "{{ else }}0{{ end }}. Bank-connection health is not being watched there.",
            f"{v.grafana_base_url}/d/{DASHBOARD_AGENT}",
        ),
        _alert(
            v,
            "OpenFinanceSweepFailing",
            f"""
sum without (result) (increase(openfinance_sweeps_total{{result="failed"}}[{v.sweep_failing_window}])) > 0
unless
sum without (result) (increase(openfinance_sweeps_total{{result=~"success|partial"}}[{v.sweep_failing_window}])) > 0
""",
            v.sweep_failing_for,
            "warning",
            "Sweeps of a source fail and none succeeds.",
            f"Sweeps of source {_on_target()} that failed in the last "
            f"{v.sweep_failing_window}: {{{{ $value | printf \"%.0f\" }}}}, and none succeeded; its fleet "
            "metrics keep their last values.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceDataStale",
            f"""
time() - (openfinance_sweep_last_success_timestamp_seconds > 0)
>
{v.stale_after_seconds}
""",
            v.stale_for,
            "critical",
            "The fleet metrics of a source are stale.",
            f"The last complete sweep of source {_on_target()} finished {{{{ $value | humanizeDuration }}}} "
            f"ago (threshold {{{{ {v.stale_after_seconds} | humanizeDuration }}}}): institution alerts "
            "for this source are looking at old data.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceUpstreamAuthFailing",
            f"""
increase(openfinance_upstream_auth_failures_total[{v.auth_failures_window}]) > 0
or
openfinance_source_up == 0
""",
            v.auth_failing_for,
            "critical",
            "The aggregator refuses the exporter's credentials.",
            f"Source {_on_target()}: refused logins in the last {v.auth_failures_window}: "
            "{{ with printf `increase(openfinance_upstream_auth_failures_total{source=%q,instance=%q}"
            f"[{v.auth_failures_window}])` $labels.source $labels.instance | query }}}}"
            "{{ . | first | value | printf \"%.0f\" }}{{ else }}none{{ end }}; openfinance_source_up: "
            "{{ with printf `openfinance_source_up{source=%q,instance=%q}` $labels.source $labels.instance "
            "| query }}{{ . | first | value | printf \"%.0f\" }}{{ else }}absent{{ end }}. The source "
            "stops sweeping rather than risk locking the partner out, so its data goes stale.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceUpstreamRateLimited",
            f"""
sum without (reason) (increase(openfinance_upstream_retries_total{{reason="rate_limited"}}[{v.rate_limited_window}]))
>=
{v.rate_limited_min_requests}
or
sum without (endpoint, status_code) (increase(openfinance_upstream_requests_total{{status_code="429"}}[{v.rate_limited_window}]))
>=
{v.rate_limited_min_requests}
""",
            v.rate_limited_for,
            "warning",
            "The aggregator rate-limits the exporter.",
            "The aggregator answered about {{ $value | printf \"%.0f\" }} requests of source "
            f"{_on_target()} with 429 Too Many Requests in the last {v.rate_limited_window}; "
            "sweeps slow down and may not finish.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceUnknownStatusCode",
            f"""
sum by (source, provider) (openfinance_accounts{{category="unknown"}}) >= {v.unknown_min_accounts}
or
sum by (source, provider) (increase(openfinance_unknown_codes_total[{v.unknown_codes_window}])) > 0
""",
            v.unknown_for,
            "warning",
            "The aggregator reports status codes the exporter does not know.",
            "Source {{ $labels.source }} ({{ $labels.provider }}): accounts or records with a status code "
            "missing from the exporter's catalog: {{ $value | printf \"%.0f\" }} (codes now: "
            "{{ range $i, $s := printf `sum by (code) (openfinance_accounts{source=%q,provider=%q,"
            "category=\"unknown\"})` $labels.source $labels.provider | query | sortByLabel \"code\" }}"
            "{{ if $i }}, {{ end }}{{ $s.Labels.code }}{{ else }}none{{ end }}). They count in category "
            "unknown, not in any outage or fixable figure.",
            fleet_dash,
        ),
        *[_alert(
            v,
            name,
            f"""
increase(openfinance_upstream_drift_total{{kind{match}}}[{v.drift_window}]) > 0
""",
            v.drift_for,
            severity,
            summary,
            "Source {{ $labels.source }} ({{ $labels.provider }}) on {{ $labels.instance }}: "
            "{{ $labels.kind }} drift {{ $value | printf \"%.0f\" }} time(s) in the last "
            f"{v.drift_window}. {consequence} Check the aggregator's changelog and the source's "
            "api_version; the agent's log names the field, status or route.",
            agent_dash,
        ) for name, match, severity, summary, consequence in (
            ("OpenFinanceUpstreamVersionRefused", '="version_refused"', "critical",
             "The aggregator refuses the API version the exporter speaks.",
             "Its sweeps, push re-reads and repair links fail."),
            ("OpenFinanceUpstreamDrift", '=~"field_missing|shape"', "warning",
             "The aggregator's answers moved under the exporter.",
             "Answers lack a field or changed shape: the accounts concerned keep their last "
             "known state instead of moving."),
        )],
    ]


def _repair_alerts(v: _Values) -> list[dict[str, Any]]:
    """Group openfinance.repair.alerts: the repair loop (remediation) and its deliveries."""
    agent_dash = _source_dashboard(v, DASHBOARD_AGENT)
    return [
        _alert(
            v,
            "OpenFinanceFixRequestsHeld",
            "sum by (source, institution_id, institution) (openfinance_fix_requests_held) > 0",
            v.fix_held_for,
            "warning",
            "The storm guard holds fix requests for one institution.",
            "{{ $value | printf \"%.0f\" }} fix requests for users of " + _where() + " are held: "
            "this institution produced more new requests within an hour than "
            "max(remediation.storm_min, remediation.storm_share of its accounts), which usually "
            "means the bank forced everyone to log in again. Nothing is sent until an operator "
            "runs `openfinance-exporter remediation release --source {{ $labels.source }} "
            "--institution {{ $labels.institution_id }}`.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceFixRequestsDeadLettered",
            f"""
sum by (source) (increase(openfinance_fix_requests_total{{result="dead"}}[{v.fix_dead_window}])) > 0
""",
            v.fix_dead_for,
            "warning",
            "Fix requests were given up after retrying for remediation.retry_for.",
            "About {{ $value | printf \"%.0f\" }} fix requests of source {{ $labels.source }} "
            f"were dead-lettered in the last {v.fix_dead_window}: the partner's endpoint did not "
            "accept them within remediation.retry_for. Those users were not told; their "
            "episodes stay open without a request.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceFixDeliveryFailing",
            f"""
sum by (source) (increase(openfinance_fix_requests_total{{result="retried"}}[{v.fix_delivery_window}])) > 0
unless on (source)
sum by (source) (increase(openfinance_fix_requests_total{{result="delivered"}}[{v.fix_delivery_window}])) > 0
""",
            v.fix_delivery_failing_for,
            "warning",
            "The partner's endpoint does not accept fix requests.",
            "Fix requests of source {{ $labels.source }} failed about {{ $value | printf \"%.0f\" }} "
            f"times in the last {v.fix_delivery_window} and none was delivered; they are retried "
            "until remediation.retry_for, then dead-lettered. Pending now: "
            "{{ with printf `sum(openfinance_fix_requests_pending{source=%q})` $labels.source | query }}"
            "{{ . | first | value | printf \"%.0f\" }}{{ else }}unknown{{ end }}.",
            agent_dash,
        ),
    ]


def _webhook_count(results: str, window: str) -> str:
    """Go template: deliveries of the alert's source with these results in the window."""
    return (
        "{{ with printf `sum(increase(openfinance_webhook_events_total{source=%q,result=~\"" + results
        + "\"}[" + window + "]))` $labels.source | query }}{{ . | first | value | printf \"%.0f\" }}"
        "{{ else }}0{{ end }}"
    )


def _push_alerts(v: _Values) -> list[dict[str, Any]]:
    """Group openfinance.push.alerts: webhook deliveries and the re-reads they trigger."""
    agent_dash = _source_dashboard(v, DASHBOARD_AGENT)
    verified = "accepted|duplicate|ignored"
    return [
        _alert(
            v,
            "OpenFinanceWebhookDeliveriesRejected",
            f"""
sum by (source) (increase(openfinance_webhook_events_total{{result=~"bad_signature|unauthorized"}}[{v.webhook_rejected_window}]))
>=
{v.webhook_rejected_min}
""",
            v.webhook_rejected_for,
            "warning",
            "Webhook deliveries are refused for a bad signature or wrong credentials.",
            "About {{ $value | printf \"%.0f\" }} webhook deliveries to source {{ $labels.source }} "
            f"were refused in the last {v.webhook_rejected_window} (bad signature: "
            f"{_webhook_count('bad_signature', v.webhook_rejected_window)}, wrong Basic credentials: "
            f"{_webhook_count('unauthorized', v.webhook_rejected_window)}); verified deliveries meanwhile: "
            f"{_webhook_count(verified, v.webhook_rejected_window)}. None verified: the partner secret "
            "or webhook password probably rotated without the agent knowing, and real events are "
            "being lost to the poll. Some verified: someone is probing the webhook endpoint.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceWebhooksSilent",
            f"""
sum by (source) (increase(openfinance_webhook_events_total{{result=~"{verified}"}}[{v.webhook_silent_window}])) == 0
and on (source)
sum by (source) (openfinance_webhook_events_total offset {v.webhook_silent_window})
""",
            v.webhook_silent_for,
            "warning",
            "A source with webhooks configured has received no verified delivery for long.",
            f"Source {{{{ $labels.source }}}} takes webhooks but received no verified delivery in the last "
            f"{v.webhook_silent_window}; refused deliveries in that time: "
            f"{_webhook_count('bad_signature|unauthorized|too_large|malformed', v.webhook_silent_window)}. "
            "The aggregator's webhook registration, the Ingress or the TLS in front of the listener "
            "may be broken: changes reach /metrics only at the next sweep.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinancePushEventsGivenUp",
            f"""
sum by (source) (increase(openfinance_push_refresh_failures_total{{result="given_up"}}[{v.push_given_up_window}])) > 0
""",
            v.push_given_up_for,
            "warning",
            "Accepted webhook events were given up: their re-reads kept failing.",
            "About {{ $value | printf \"%.0f\" }} webhook events of source {{ $labels.source }} were "
            f"given up in the last {v.push_given_up_window}: the agent acknowledged them, but re-reading "
            "their owners failed until webhooks.give_up_after. Those owners' changes reach /metrics "
            "only at the next sweep. Failed re-reads retried in that time: "
            "{{ with printf `sum(increase(openfinance_push_refresh_failures_total{source=%q,"
            f"result=\"retried\"}}[{v.push_given_up_window}]))` $labels.source | query }}}}"
            "{{ . | first | value | printf \"%.0f\" }}{{ else }}0{{ end }}.",
            agent_dash,
        ),
        _alert(
            v,
            "OpenFinanceWebhookForwardFailing",
            f"""
sum by (source) (increase(openfinance_webhook_forward_failures_total[{v.forward_failing_window}])) > 0
""",
            v.forward_failing_for,
            "warning",
            "Webhook deliveries for another shard's owners cannot be forwarded to that shard.",
            "About {{ $value | printf \"%.0f\" }} webhook deliveries to source {{ $labels.source }} "
            f"for owners of another shard could not be forwarded in the last {v.forward_failing_window} "
            "(the owner's pod unreachable: {{ with printf `sum(increase(openfinance_webhook_forward_failures_total"
            f"{{source=%q,reason=\"unreachable\"}}[{v.forward_failing_window}]))` $labels.source | query }}}}"
            "{{ . | first | value | printf \"%.0f\" }}{{ else }}0{{ end }}; answering 404 or 5xx: "
            "{{ with printf `sum(increase(openfinance_webhook_forward_failures_total"
            f"{{source=%q,reason=\"unavailable\"}}[{v.forward_failing_window}]))` $labels.source | query }}}}"
            "{{ . | first | value | printf \"%.0f\" }}{{ else }}0{{ end }}). The senders were told "
            "to retry (503 + Retry-After); until that shard takes them, its owners' changes wait "
            "for the retries or the next sweep.",
            agent_dash,
        ),
    ]


# (group name, builder), in file order.
GROUPS: tuple[tuple[str, Callable[[_Values], list[dict[str, Any]]]], ...] = (
    ("openfinance.institution.rules", _recording_rules),
    ("openfinance.institution.alerts", _institution_alerts),
    ("openfinance.agent.alerts", _agent_alerts),
    ("openfinance.health.rules", lambda v: health_rules.recording_rules(sys.modules[__name__], v)),
    ("openfinance.health.alerts", lambda v: health_rules.alerting_rules(sys.modules[__name__], v)),
    ("openfinance.repair.alerts", _repair_alerts),
    ("openfinance.push.alerts", _push_alerts),
)


def _groups(v: _Values) -> list[dict[str, Any]]:
    return [{"name": name, "rules": build(v)} for name, build in GROUPS]


_HEADER = """\
# Generated by alerts/generate.py from its DEFAULTS{extra}; do not edit by hand.
# Regenerate with: python alerts/generate.py
"""

_TEMPLATE_HEADER = """\
# Generated by alerts/generate.py; do not edit by hand.
# Every threshold and duration is a placeholder [[ <name> ]]; alerts/params.yml holds the
# defaults. Substitute them as text (the Helm chart does), then load as YAML.
"""


def _dump(groups: list[dict[str, Any]]) -> str:
    return yaml.dump(
        {"groups": groups}, Dumper=_Dumper, sort_keys=False, width=10**6, allow_unicode=False
    )


def render(params: dict[str, Any] | None = None, header: str | None = None) -> str:
    """The rules file for ``params`` (defaults for anything left out)."""
    values = validate(params or {})
    if header is None:
        header = _HEADER.format(extra="")
    return header + _dump(_groups(_Values(values)))


def render_template() -> str:
    """The rules with each parameter as a ``[[ name ]]`` placeholder."""
    return _TEMPLATE_HEADER + _dump(_groups(_Values(None)))


def render_params() -> str:
    lines = ["# Defaults of the alert parameters (alerts/generate.py DEFAULTS); generated.", ""]
    for name, (default, help_) in PARAMETERS.items():
        lines.append(f"# {help_}")
        lines.append(yaml.safe_dump({name: default}, width=10**6).rstrip("\n"))
    return "\n".join(lines) + "\n"


def fill_template(template: str, params: dict[str, Any]) -> str:
    """Substitute ``[[ name ]]`` as plain text, the way the Helm chart does."""
    text, values = template, _Values(params)
    for name in params:
        text = text.replace(f"[[ {name} ]]", getattr(values, name))
    return text


def committed_outputs() -> dict[Path, str]:
    return {RULES_FILE: render(), TEMPLATE_FILE: render_template(), PARAMS_FILE: render_params()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, help="YAML mapping of parameters to override")
    parser.add_argument("--short-durations", action="store_true",
                        help="every for: 0s-15s and windows of 1-2m (end-to-end tests)")
    parser.add_argument("--out", type=Path, help="write the rules here ('-' for stdout)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed files differ from a fresh render")
    args = parser.parse_args(argv)

    if args.check:
        stale = [p for p, text in committed_outputs().items()
                 if not p.exists() or p.read_text(encoding="utf-8") != text]
        for p in stale:
            print(f"{p.relative_to(HERE.parent)} is out of date; run python -m alerts.generate",
                  file=sys.stderr)
        return 1 if stale else 0

    if not (args.params or args.short_durations or args.out):
        for path, text in committed_outputs().items():
            path.write_text(text, encoding="utf-8")
        return 0

    params: dict[str, Any] = {}
    extra = []
    if args.short_durations:
        params.update(SHORT_DURATIONS)
        extra.append("with --short-durations")
    if args.params:
        loaded = yaml.safe_load(args.params.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            print(f"{args.params}: expected a mapping of parameter names to values", file=sys.stderr)
            return 2
        params.update(loaded)
        extra.append(f"and {args.params.name}" if extra else f"with {args.params.name}")
    try:
        text = render(params, header=_HEADER.format(extra=(" " + " ".join(extra)) if extra else ""))
    except ValueError as exc:
        print(f"bad parameters: {exc}", file=sys.stderr)
        return 2
    if args.out is None or str(args.out) == "-":
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
