"""Build the prebuilt Grafana dashboards with grafana-foundation-sdk and write them as JSON.

One file per dashboard, ``dashboards/<uid>.json``, committed; the uid equals the file name so
links and provisioning survive re-imports. ``python -m dashboards.generate`` (from the
repository root) rewrites them, ``--check`` exits 1 when the committed files differ from what
this script builds. The alert thresholds drawn on panels come from :mod:`alerts.generate`;
``dashboards/templates/<uid>.json`` holds each dashboard with those thresholds as placeholders,
which the Helm chart fills from its ``prometheusRule.params`` (:func:`build_templates`).

Queries only use metrics from ``exporter/metrics/catalog.py`` (and Prometheus' own ``ALERTS``),
which ``tests/dashboards`` enforces. :func:`iter_queries` and :func:`substitute_variables` are
the entry points for tests that run every panel's query against a real Prometheus.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_model
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from alerts.generate import DEFAULTS as ALERT_DEFAULTS
from exporter.health.sides import HEALTH_SIDES, SIDES

DASHBOARDS_DIR = Path(__file__).resolve().parent
TEMPLATES = "templates"  # dashboards/templates/: the Helm chart's copies (build_templates)
REPO_ROOT = DASHBOARDS_DIR.parent
STATUS_CODES_CSV = REPO_ROOT / "exporter" / "data" / "status_codes.csv"

# --- Alert parameters drawn as thresholds: the dashboards draw the alert rules' own numbers --
# The committed dashboards carry the defaults. The Helm chart ships templates of them instead
# (:func:`build_templates`), where each parameter is a ``[[ name ]]`` placeholder (a number in
# thresholds and queries) or ``[[ name:percent ]]`` / ``[[ name:duration ]]`` (in text), which
# it fills from ``prometheusRule.params``: overriding an alert's threshold in the values moves
# the dashboards' threshold lines, colours and texts with it.
class _Param:
    """A parameter's value; in a template, formatted as its placeholder."""

    name: str
    template = False

    base: type

    def __format__(self, spec: str) -> str:
        if not self.template:
            plain = {float: float.__float__, int: int.__int__, str: str.__str__}[self.base]
            return format(plain(self), spec)  # type: ignore[operator]
        return f"[[ {self.name}:percent ]]" if spec.endswith("%") else f"[[ {self.name} ]]"

    def __str__(self) -> str:
        return format(self, "")


class _Float(_Param, float):
    base = float


class _Int(_Param, int):
    base = int


class _Str(_Param, str):
    base = str


def _param(name: str, kind: type, value: object | None = None, template: bool = False) -> _Param:
    """``name``'s default, or in a template a marker whose JSON form is unique (replaced by
    the placeholder once rendered)."""
    cls = {float: _Float, int: _Int, str: _Str}[kind]
    if value is None:
        value = kind(ALERT_DEFAULTS[name])
    param = cls(value)
    param.name, param.template = name, template
    return param


_PARAMS = {  # module constant → (alert parameter, type)
    # OpenFinanceInstitutionOutage: share of an institution's accounts in category
    # "institution" … and at least this many accounts.
    "OUTAGE_RATIO": ("outage_ratio", float),
    "OUTAGE_MIN_ACCOUNTS": ("outage_min_accounts", int),
    # OpenFinanceRepeatedOTP: suspected accounts at one institution (fires at > 0 by default).
    "OTP_SUSPECTED_MIN": ("otp_min_accounts", int),
    # OpenFinanceConsentWave: share of an institution's accounts whose consent ends within
    # 7 days … and at least this many accounts.
    "CONSENT_WAVE_RATIO": ("consent_wave_ratio", float),
    "CONSENT_WAVE_MIN_ACCOUNTS": ("consent_wave_min_accounts", int),
    # OpenFinanceDataStale: seconds since the last successful sweep.
    "STALE_AFTER_SECONDS": ("stale_after_seconds", int),
    # OpenFinanceWebhookDeliveriesRejected: refused deliveries in its window.
    "WEBHOOK_REJECTED_MIN": ("webhook_rejected_min", int),
    "WEBHOOK_REJECTED_WINDOW": ("webhook_rejected_window", str),
}
OUTAGE_RATIO = _param("outage_ratio", float)
OUTAGE_MIN_ACCOUNTS = _param("outage_min_accounts", int)
OTP_SUSPECTED_MIN = _param("otp_min_accounts", int)
CONSENT_WAVE_RATIO = _param("consent_wave_ratio", float)
CONSENT_WAVE_MIN_ACCOUNTS = _param("consent_wave_min_accounts", int)
STALE_AFTER_SECONDS = _param("stale_after_seconds", int)
WEBHOOK_REJECTED_MIN = _param("webhook_rejected_min", int)
WEBHOOK_REJECTED_WINDOW = _param("webhook_rejected_window", str)


def _markers() -> dict[str, tuple[_Param, str]]:
    """Template markers: module constant → (marker value, its JSON text)."""
    out = {}
    for i, (constant, (name, kind)) in enumerate(_PARAMS.items()):
        # same length, none a prefix of another: replaced one by one without overlap
        value = {float: float(f"0.73{i:02d}1"), int: 987_650_000 + i,
                 str: f"[[ {name} ]]"}[kind]
        marker = _param(name, kind, value, template=True)
        out[constant] = (marker, json.dumps(value) if kind is not str else "")
    return out


def _duration_text(seconds: int) -> str:
    if isinstance(seconds, _Param) and seconds.template:
        return f"[[ {seconds.name}:duration ]]"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


# --- Variables and label filters ----------------------------------------------------------
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "openfinance"

FLEET = ('source=~"$source", provider=~"$provider", '
         'institution=~"$institution", institution_id=~"$institution_id"')
SOURCE_PROVIDER = 'source=~"$source", provider=~"$provider"'  # age histograms: no institution
AGENT = 'source=~"$source"'  # self-metrics carry only the source
INSTITUTION = "source, provider, institution_id, institution"
FIXABLE_CATEGORIES = "credentials|user_action|mfa|oauth"

# What a test or a person should put in place of each variable when running a query outside
# Grafana: ``.*`` is what Grafana sends for "All" (every variable here has allValue ".*").
DEFAULT_VARIABLE_VALUES: dict[str, str] = {
    "source": ".*",
    "provider": ".*",
    "institution": ".*",
    "institution_id": ".*",
    "window": "1h",
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "1h",
    "__range_s": "3600",
}

# A panel shows data when at least one of its queries returns a series: breakdowns of events
# that may not have happened yet (retries by reason, webhooks by kind) come with a total that
# always answers. These panels may legitimately be empty: nothing is firing, or a quantile of
# events that have not happened (no webhook applied, no fix request delivered and fixed).
MAY_BE_EMPTY = frozenset({"Firing OpenFinance alerts", "Webhook event to /metrics latency",
                          "Time to fix by category", "Median time to fix by category",
                          "Repair funnel by institution and code"})
# Panels about push or the repair loop: off, they show their zero fallback only.
PUSH_AND_REPAIR = frozenset({
    "Webhook events", "Rejected webhook deliveries", "Failed webhook re-reads",
    "Deliveries not forwarded to their shard",
    "Fix requests", "Fix requests created", "Fix requests delivered", "Fixed logins",
    "Rebroke within 7 days", "Abandoned episodes", "Pending / held", "Repair funnel per hour",
    "Pending and held fix requests"})


# --- Status-code knowledge for descriptions (from the catalog data, not repeated here) -----
def _catalog_rows() -> list[dict[str, str]]:
    with STATUS_CODES_CSV.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _compact_codes(codes: list[str]) -> str:
    """``103, 108, 945, 946, 947`` → ``103, 108, 945–947`` (numeric runs only)."""
    numeric = sorted(int(c) for c in codes if c.isdigit())
    others = [c for c in codes if not c.isdigit()]
    parts: list[str] = []
    i = 0
    while i < len(numeric):
        j = i
        while j + 1 < len(numeric) and numeric[j + 1] == numeric[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{numeric[i]}–{numeric[j]}")
        else:
            parts.extend(str(n) for n in numeric[i:j + 1])
        i = j + 1
    return ", ".join(parts + others)


def _fixable(provider: str) -> str:
    return _compact_codes([r["code"] for r in _catalog_rows()
                           if r["provider"] == provider and r["fixable"] == "true"])


def _codes_in(provider: str, category: str) -> str:
    return _compact_codes([r["code"] for r in _catalog_rows()
                           if r["provider"] == provider and r["category"] == category])


def _code_guide() -> str:
    return (
        "**What the codes mean and what to do**\n\n"
        f"- **Fixable** — Finicity {_fixable('finicity')}; MX {_fixable('mx')}: send the "
        "customer a repair link (Finicity *Connect Fix*, MX Connect widget in update mode). "
        "103 = the login changed at the bank; 108/109 = the bank wants the user to act on its "
        "site first (accept terms, update security details); 185/187 = an MFA question or "
        "one-time passcode; 945–948 = OAuth consent or token must be renewed.\n"
        f"- **Institution** — Finicity {_codes_in('finicity', 'institution')}; MX "
        f"{_codes_in('mx', 'institution')}: outage, maintenance or a connection being built "
        "or repaired. Nothing the customer can do; the aggregator retries. If a 9xx code "
        "persists for days, open a support ticket with the aggregator quoting the "
        "institution id.\n"
        "- **931 — one-time passcode on every refresh**: the bank asks for a passcode at "
        "every login, so background refreshes never succeed and Connect Fix does not stop it. "
        "Tell these users their data updates only when they refresh in the app themselves.\n"
        f"- **Not fixable**: unsupported ({_codes_in('finicity', 'unsupported')}), account "
        f"closed ({_codes_in('finicity', 'account_closed')}): remove the account or mark it "
        "offline. **unknown** = a code not in the catalog: check the aggregator's docs."
    )


# --- Small builders ------------------------------------------------------------------------
def _target(expr: str, legend: str = "__auto", *, instant: bool = False,
            fmt: PromQueryFormat | None = None) -> prom.Dataquery:
    q = prom.Dataquery().expr(expr).datasource(DATASOURCE)
    q = q.instant() if instant else q.range()
    if fmt is not None:
        q = q.format(fmt)
    if legend and fmt is not PromQueryFormat.TABLE:
        q = q.legend_format(legend)
    return q


def _quantiles(series: str, by: str, legend: str,
               quantiles: tuple[float, ...] = (0.5, 0.9)) -> list[prom.Dataquery]:
    """A target per quantile of a histogram: ``series`` (its buckets, or their rate) summed
    by ``by`` and ``le``; the legend is ``p50 <legend>``, ``p90 <legend>``, …"""
    return [_target(f"histogram_quantile({q}, sum by ({by}, le) ({series}))",
                    f"p{round(q * 100)} {legend}") for q in quantiles]


def _bucket_bars(buckets: str) -> list[prom.Dataquery]:
    """The target of a bar gauge with a bar per bucket of a histogram (upper bound ``le``)."""
    return [_target(f"sum by (le) ({buckets}{{{SOURCE_PROVIDER}}})", "{{le}}", instant=True,
                    fmt=PromQueryFormat.HEATMAP)]


def _table_target(expr: str) -> prom.Dataquery:
    return _target(expr, instant=True, fmt=PromQueryFormat.TABLE)


def _steps(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    return dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE).steps(
        [model.Threshold(value=v, color=c) for v, c in steps])


def _setup(panel, title: str, description: str, unit: str,
           targets: list[prom.Dataquery], w: int, h: int):
    panel = (panel.title(title).description(description).datasource(DATASOURCE)
             .unit(unit).span(w).height(h))
    for i, t in enumerate(targets):
        panel = panel.with_target(t.ref_id(chr(ord("A") + i)))
    return panel


def _stat(title: str, description: str, unit: str, targets: list[prom.Dataquery], *,
          thresholds: dash.ThresholdsConfig | None = None, w: int = 4, h: int = 5,
          graph: bool = True, mappings: list[model.ValueMapping] | None = None) -> stat.Panel:
    p = _setup(stat.Panel(), title, description, unit, targets, w, h)
    p = (p.graph_mode(common_model.BigValueGraphMode.AREA if graph
                      else common_model.BigValueGraphMode.NONE)
         .color_mode(common_model.BigValueColorMode.VALUE)
         .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .thresholds(thresholds or _steps((None, "text"))))
    if mappings:
        p = p.mappings(mappings)
    return p


def _timeseries(title: str, description: str, unit: str, targets: list[prom.Dataquery], *,
                w: int = 12, h: int = 8, stack: bool = False, min_val: float | None = 0,
                max_val: float | None = None,
                threshold_line: dash.ThresholdsConfig | None = None,
                legend_table: bool = False) -> timeseries.Panel:
    p = _setup(timeseries.Panel(), title, description, unit, targets, w, h)
    p = p.line_width(1).fill_opacity(40 if stack else 10)
    if stack:
        p = p.stacking(common_builder.StackingConfig().mode(common_model.StackingMode.NORMAL))
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if threshold_line is not None:
        p = p.thresholds(threshold_line).thresholds_style(
            common_builder.GraphThresholdsStyleConfig().mode(
                common_model.GraphThresholdsStyleMode.DASHED))
    legend = common_builder.VizLegendOptions().show_legend(True)
    if legend_table:
        legend = (legend.display_mode(common_model.LegendDisplayMode.TABLE)
                  .placement(common_model.LegendPlacement.RIGHT)
                  .calcs(["lastNotNull", "max"]).sort_by("Last *").sort_desc(True))
    else:
        legend = (legend.display_mode(common_model.LegendDisplayMode.LIST)
                  .placement(common_model.LegendPlacement.BOTTOM))
    return p.legend(legend).tooltip(
        common_builder.VizTooltipOptions().mode(common_model.TooltipDisplayMode.MULTI)
        .sort(common_model.SortOrder.DESCENDING))


def _table(title: str, description: str, unit: str, targets: list[prom.Dataquery], *,
           rename: Mapping[str, str], order: list[str], sort_by: str, w: int = 12, h: int = 9,
           overrides: Mapping[str, list[model.DynamicConfigValue]] | None = None,
           thresholds: dash.ThresholdsConfig | None = None) -> table.Panel:
    p = _setup(table.Panel(), title, description, unit, targets, w, h)
    original = {shown: field for field, shown in rename.items()}
    if len(targets) > 1:
        p = p.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    p = p.with_transformation(model.DataTransformerConfig(id_val="organize", options={
        "excludeByName": {"Time": True},
        "renameByName": dict(rename),
        # organize matches fields by their original names, before renameByName applies.
        "indexByName": {original.get(name, name): i for i, name in enumerate(order)},
    }))
    p = p.sort_by([common_builder.TableSortByFieldState().display_name(sort_by).desc(True)])
    if thresholds is not None:
        p = p.thresholds(thresholds)
    for name, props in (overrides or {}).items():
        p = p.override_by_name(name, props)
    return p


def _bargauge(title: str, description: str, unit: str, targets: list[prom.Dataquery], *,
              thresholds: dash.ThresholdsConfig, w: int = 12, h: int = 9,
              min_val: float | None = 0, max_val: float | None = None) -> bargauge.Panel:
    p = _setup(bargauge.Panel(), title, description, unit, targets, w, h)
    p = (p.orientation(common_model.VizOrientation.HORIZONTAL)
         .display_mode(common_model.BarGaugeDisplayMode.GRADIENT)
         .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
         .thresholds(thresholds))
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    return p


def _cell_color(mode: common_model.TableCellDisplayMode) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": str(mode)})


def _unit(unit: str) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val="unit", value=unit)


def _thresholds_value(*steps: tuple[float | None, str]) -> model.DynamicConfigValue:
    return model.DynamicConfigValue(id_val="thresholds", value={
        "mode": "absolute", "steps": [{"value": v, "color": c} for v, c in steps]})


# --- Variables -------------------------------------------------------------------------------
def _query_variable(name: str, label: str, query: str, description: str, *,
                    multi: bool = True) -> dash.QueryVariable:
    return (dash.QueryVariable(name).label(label).description(description)
            .datasource(DATASOURCE).query(query)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
            .multi(multi).include_all(True).all_value(".*")
            .current(model.VariableOption(text="All", value="$__all", selected=True)))


def _variables(*, single_institution: bool = False) -> list:
    """datasource, source, provider, institution, institution_id — the same on every dashboard."""
    base = "openfinance_accounts"
    return [
        dash.DatasourceVariable("datasource").label("Data source").type("prometheus")
        .description("The Prometheus that scrapes openfinance-exporter."),
        _query_variable("source", "Source", f"label_values({base}, source)",
                        "Configured source (e.g. finicity-prod)."),
        _query_variable("provider", "Provider",
                        f'label_values({base}{{source=~"$source"}}, provider)',
                        "Aggregator: finicity or mx."),
        _query_variable("institution", "Institution",
                        f'label_values({base}{{source=~"$source", provider=~"$provider"}}, '
                        "institution)",
                        "Institution display name.", multi=not single_institution),
        _query_variable("institution_id", "Institution ID",
                        f'label_values({base}{{source=~"$source", provider=~"$provider", '
                        'institution=~"$institution"}, institution_id)',
                        "The aggregator's institution id: tells apart institutions that share "
                        "a display name; quote it in support tickets."),
    ]


def _links() -> list[dash.DashboardLink]:
    return [dash.DashboardLink("OpenFinance dashboards").type(model.DashboardLinkType.DASHBOARDS)
            .tags([TAG]).as_dropdown(True).include_vars(True).keep_time(True)]


def _dashboard(uid: str, title: str, description: str) -> dash.Dashboard:
    return (dash.Dashboard(title).uid(uid).description(description).tags([TAG])
            .editable().refresh("1m").time("now-6h", "now").timezone("browser")
            .tooltip(model.DashboardCursorSync.CROSSHAIR).links(_links()))


# --- Expressions -----------------------------------------------------------------------------
def accounts(extra: str = "") -> str:
    return f"openfinance_accounts{{{FLEET}{extra}}}"


def with_code_name(by: str, selector: str, labels: str = "name") -> str:
    """``sum by (…)`` of a per-code gauge, joined with the code's name from the catalog series.

    Codes missing from ``openfinance_status_code_info`` (category unknown) are kept, unnamed.
    """
    summed = f"sum by ({by}) ({selector})"
    return (f"{summed} * on (provider, code) group_left ({labels}) "
            f"group by (provider, code, {labels}) (openfinance_status_code_info) "
            f"or on (provider, code) {summed}")


def share(by: str, part: str, whole: str) -> str:
    """``part / whole`` per group, 0 (not absent) where ``part`` has no series."""
    agg = f"sum by ({by})" if by else "sum"
    return f"({agg} ({part}) or 0 * {agg} ({whole})) / {agg} ({whole})"


OUTAGE_SELECTOR = accounts(', category="institution"')
NOT_OK_SELECTOR = accounts(', category!="ok"')
MFA_SELECTOR = accounts(', category="mfa"')


OUTAGE_SHARE = share(INSTITUTION, accounts(', category="institution"'), accounts())
OUTAGE_ACCOUNTS = (f'sum by ({INSTITUTION}) ({OUTAGE_SELECTOR}) '
                   f"or 0 * sum by ({INSTITUTION}) ({accounts()})")
OTP_BY_INSTITUTION = (f"sum by ({INSTITUTION}) (openfinance_otp_suspected_accounts{{{FLEET}}}) "
                      f"or 0 * sum by ({INSTITUTION}) ({accounts()})")
def _in_outage() -> str:
    return (f"({OUTAGE_SHARE}) >= {OUTAGE_RATIO} "
            f"and ({OUTAGE_ACCOUNTS}) >= {OUTAGE_MIN_ACCOUNTS}")


IN_OUTAGE = _in_outage()


def transitions(extra: str = "", by: str = "") -> str:
    """Transitions per minute (``rate`` × 60)."""
    agg = f"sum by ({by})" if by else "sum"
    return (f"{agg} (rate(openfinance_status_transitions_total{{{FLEET}{extra}}}"
            "[$__rate_interval])) * 60")


def or_zero(expr: str) -> str:
    """For series that legitimately do not exist yet (no transition, no alert)."""
    return f"{expr} or on () vector(0)"


ACCOUNTS_LEGEND = "{{institution}} ({{institution_id}})"

_KEYED = "source, provider, institution_id"
_HEALTH_CATEGORIES = "|".join(c for side in HEALTH_SIDES for c in SIDES[side])
# Success share per aggregator for every institution sharing a key with the selected one.
HEALTH_BY_KEY = (
    f'(sum by ({_KEYED}) (openfinance_accounts{{category="ok"}}) '
    f'/ sum by ({_KEYED}) (openfinance_accounts{{category=~"{_HEALTH_CATEGORIES}"}})) '
    f"* on ({_KEYED}) group_left (key) openfinance_institution_key_info "
    f"and on (key) (openfinance_institution_key_info and on ({_KEYED}) {accounts()})"
)


# --- Repair funnel (fleet overview) -----------------------------------------------------------
FIX_INSTITUTION = "openfinance_fix_institution_outcomes_total"
HELD_FILTER = 'source=~"$source", institution=~"$institution", institution_id=~"$institution_id"'
_FUNNEL_BY = f"{INSTITUTION}, code"
_REPAIR_OFF = ("Zero (or empty) unless the repair loop is switched on "
               "(`remediation.enabled`).")


def funnel_step(outcome: str, by: str = "", window: str = "$__range") -> str:
    """Steps of the per-institution repair funnel in ``window`` (requested, fixed, abandoned)."""
    agg = f"sum by ({by})" if by else "sum"
    return (f"{agg} (increase({FIX_INSTITUTION}{{{FLEET}, outcome=\"{outcome}\"}}"
            f"[{window}]))")


def _repair_funnel(d: dash.Dashboard) -> dash.Dashboard:
    """The "Repair funnel" row: requests out, outcomes back, time to fix, per institution."""
    none = f"0 * sum({accounts()})"
    requests = f"openfinance_fix_requests_total{{{SOURCE_PROVIDER}"
    outcomes = f"openfinance_fix_outcomes_total{{{SOURCE_PROVIDER}"
    d = d.with_row(dash.Row("Repair funnel"))
    for title, description, expr, w in (
        ("Fix requests created", "Fix requests the repair loop created in the time range "
         "(one per login and breakage episode; held ones included). Follows every filter.",
         f"{funnel_step('requested')} or {none}", 4),
        ("Fix requests delivered", "Fix requests the partner's endpoint accepted (2xx) in the time range.",
         f'sum(increase({requests}, result="delivered"}}[$__range])) or {none}', 4),
        ("Fixed logins", "Episodes whose request was delivered and whose login is back at ok, in "
         "the time range.", f'sum(increase({outcomes}, outcome="fixed"}}[$__range])) or {none}',
         4),
        ("Rebroke within 7 days", "Fixed logins that broke again within 7 days, in the time range.",
         f'sum(increase({outcomes}, outcome="rebroke"}}[$__range])) or {none}', 4),
        ("Abandoned episodes", "Episodes still broken after remediation.retry_for plus abandon_after "
         "although their request was delivered: the user did not act.",
         f'sum(increase({outcomes}, outcome="abandoned"}}[$__range])) or {none}', 4),
    ):
        d = d.with_panel(_stat(title, f"{description} {_REPAIR_OFF}", "short",
                               [_target(expr)], w=w, graph=False))
    d = d.with_panel(_stat(
        "Pending / held", "Fix requests waiting for delivery (retries included) and requests "
        "held by the storm guard until an operator releases them (`openfinance-exporter "
        f"remediation release`). {_REPAIR_OFF}", "short",
        [_target(f"sum(openfinance_fix_requests_pending{{{AGENT}}}) or {none}", "pending"),
         _target(f"sum(openfinance_fix_requests_held{{{HELD_FILTER}}}) or {none}", "held")],
        thresholds=_steps((None, "text")), w=4, graph=False).text_mode(
            common_model.BigValueTextMode.VALUE_AND_NAME))
    d = d.with_panel(_timeseries(
        "Repair funnel per hour", "Fix requests created and delivered, and the outcomes of "
        f"delivered ones, per hour. {_REPAIR_OFF}", "short",
        [_target(f"{funnel_step('requested', window='1h')} or {none}", "created"),
         _target(f'sum(increase({requests}, result="delivered"}}[1h]))', "delivered"),
         _target(f"sum by (outcome) (increase({outcomes}}}[1h]))", "{{outcome}}")]))
    d = d.with_panel(_timeseries(
        "Pending and held fix requests", "Requests waiting for delivery per source, and "
        f"requests held by the storm guard per institution. {_REPAIR_OFF}", "short",
        [_target(f"sum by (source) (openfinance_fix_requests_pending{{{AGENT}}}) "
                 f"or 0 * sum by (source) ({accounts()})", "{{source}} pending"),
         _target(f"sum by (source, institution) (openfinance_fix_requests_held{{{HELD_FILTER}}})",
                 "{{source}} held at {{institution}}")]))
    resolution = f"openfinance_fix_resolution_seconds_bucket{{{SOURCE_PROVIDER}}}"
    d = d.with_panel(_table(
        "Time to fix by category", "From a fix request's delivery to its login being back at "
        "ok, over the time range: median, 90th percentile and the number fixed, by the "
        "category the request was made for (credentials, user_action, mfa, oauth). Buckets "
        f"run from 1 h to 30 d. Filtered by source and provider only. {_REPAIR_OFF}", "s",
        [_table_target("histogram_quantile(0.5, sum by (provider, category, le) "
                       f"(increase({resolution}[$__range])))"),
         _table_target("histogram_quantile(0.9, sum by (provider, category, le) "
                       f"(increase({resolution}[$__range])))"),
         _table_target("sum by (provider, category) (increase(openfinance_fix_resolution_seconds"
                       f"_count{{{SOURCE_PROVIDER}}}[$__range]))")],
        rename={"Value #A": "Median", "Value #B": "p90", "Value #C": "Fixed",
                "provider": "Provider", "category": "Category"},
        order=["Provider", "Category", "Median", "p90", "Fixed"], sort_by="Fixed",
        overrides={"Fixed": [_unit("short")]}))
    d = d.with_panel(_timeseries(
        "Median time to fix by category", "Median (p50) and p90 of request delivered → back "
        "at ok over the trailing day, by category. Filtered by source and provider only. "
        + _REPAIR_OFF, "s",
        _quantiles(f"increase({resolution}[1d])", "category", "{{category}}")))
    fixed_share = (f"{funnel_step('fixed', _FUNNEL_BY)} / ({funnel_step('requested', _FUNNEL_BY)}"
                   " > 0)")
    d = d.with_panel(_table(
        "Repair funnel by institution and code", "Per institution and fixable code, over the "
        "time range: fix requests created, episodes fixed and abandoned after a delivered "
        "request, and the fixed share. Sorted by abandoned: the institutions and codes whose "
        "users never fix their connection (the link may be broken for that bank, or the code "
        "needs the user at the bank's own site). Code: the request's code for created, the "
        "login's latest fixable code for fixed and abandoned. Small institutions folded by "
        f"`tracker.institution_min_accounts` appear as `other`. {_REPAIR_OFF}", "short",
        [_table_target(funnel_step("requested", _FUNNEL_BY)),
         _table_target(funnel_step("fixed", _FUNNEL_BY)),
         _table_target(funnel_step("abandoned", _FUNNEL_BY)),
         _table_target(fixed_share)],
        rename={"Value #A": "Created", "Value #B": "Fixed", "Value #C": "Abandoned",
                "Value #D": "Fixed share", "institution": "Institution",
                "institution_id": "Institution ID", "provider": "Provider", "source": "Source",
                "code": "Code"},
        order=["Institution", "Institution ID", "Provider", "Source", "Code", "Created",
               "Fixed", "Abandoned", "Fixed share"],
        sort_by="Abandoned", w=24,
        overrides={"Fixed share": [
            _unit("percentunit"),
            _thresholds_value((None, "red"), (0.25, "orange"), (0.5, "green")),
            _cell_color(common_model.TableCellDisplayMode.COLOR_TEXT)]}))
    return d


# --- Fleet overview ------------------------------------------------------------------------
def fleet_overview() -> dash.Dashboard:
    guide = _code_guide()
    d = _dashboard("openfinance-fleet-overview", "OpenFinance / Fleet overview",
                   "Bank-connection health of every account the exporter tracks at "
                   "Mastercard Open Finance (Finicity) and MX.")
    for v in _variables():
        d = d.with_variable(v)

    d = d.with_row(dash.Row("Now"))
    d = d.with_panel(_stat(
        "Healthy accounts", "Share of accounts whose last aggregation succeeded (category "
        "`ok`: Finicity code 0, MX CONNECTED). Pending, manual and disabled accounts count in "
        "the total.", "percentunit",
        [_target(share("", accounts(', category="ok"'), accounts()))],
        thresholds=_steps((None, "red"), (0.8, "orange"), (0.95, "green")), w=4))
    d = d.with_panel(_stat(
        "Accounts tracked", "Accounts (Finicity) or members (MX) with a known status.", "short",
        [_target(f"sum({accounts()})")], w=3))
    d = d.with_panel(_stat(
        "Not ok", "Accounts in any category other than `ok`.\n\n" + guide, "short",
        [_target(f'sum({NOT_OK_SELECTOR}) '
                 f"or 0 * sum({accounts()})")], w=3))
    d = d.with_panel(_stat(
        "Fixable backlog", "Accounts at a code that a repair link resolves: send the customer "
        f"Connect Fix (Finicity {_fixable('finicity')}) or the MX Connect widget in update mode "
        f"(MX {_fixable('mx')}).", "short",
        [_target(f"sum(openfinance_fixable_accounts{{{FLEET}}}) or 0 * sum({accounts()})")],
        thresholds=_steps((None, "green"), (1, "orange")), w=3))
    d = d.with_panel(_stat(
        "OTP suspects", "Accounts whose last distinct aggregation attempts all ended in MFA "
        "(185), or that fell back into 185 after a fix: the bank probably wants a one-time "
        "passcode on every refresh. Tell these users their data only updates when they refresh "
        f"themselves. The OTP alert fires from {OTP_SUSPECTED_MIN} such account(s) at an "
        "institution.", "short",
        [_target(f"sum(openfinance_otp_suspected_accounts{{{FLEET}}}) or 0 * sum({accounts()})")],
        thresholds=_steps((None, "green"), (OTP_SUSPECTED_MIN, "orange")), w=3))
    d = d.with_panel(_stat(
        "Institutions in outage", "Institutions over the outage alert threshold: at least "
        f"{OUTAGE_RATIO:.0%} of their accounts, and at least {OUTAGE_MIN_ACCOUNTS} accounts, "
        "in category `institution` (9xx outage, maintenance, connection being built or "
        "repaired). Nothing the customer can do; open a ticket with the aggregator if it "
        "persists for days.", "short",
        [_target(or_zero(f"count({IN_OUTAGE})"))],
        thresholds=_steps((None, "green"), (1, "red")), w=4))
    d = d.with_panel(_stat(
        "Firing alerts", "OpenFinance alerts firing now (Prometheus' own ALERTS series).",
        "short",
        [_target(or_zero('count(ALERTS{alertname=~"OpenFinance.+", alertstate="firing"})'))],
        thresholds=_steps((None, "green"), (1, "red")), w=4))

    d = d.with_row(dash.Row("Accounts by status"))
    d = d.with_panel(_timeseries(
        "Accounts by category", "Accounts per normalised category over time. `institution` "
        "rising across many banks at once points at the aggregator; at one bank, at the bank."
        "\n\n" + guide, "short",
        [_target(f"sum by (category) ({accounts()})", "{{category}}")], stack=True))
    d = d.with_panel(_timeseries(
        "Healthy share by provider", "Share of accounts in category `ok`, per source and "
        "provider.", "percentunit",
        [_target(share("source, provider", accounts(', category="ok"'), accounts()),
                 "{{source}} / {{provider}}")], max_val=1))
    d = d.with_panel(_table(
        "Broken accounts by code", "Accounts not `ok`, by status code, with the code's name "
        "from the catalog (`openfinance_status_code_info`).\n\n" + guide, "short",
        [_table_target(with_code_name("provider, code, category",
                                      accounts(', category!="ok"'), "name, fixable"))],
        rename={"Value": "Accounts", "name": "Name", "code": "Code", "provider": "Provider",
                "category": "Category", "fixable": "Fixable"},
        order=["Provider", "Code", "Name", "Category", "Fixable", "Accounts"],
        sort_by="Accounts"))
    d = d.with_panel(_timeseries(
        "Broken accounts by code over time", "Accounts not `ok`, by code and name.\n\n" + guide,
        "short",
        [_target(with_code_name("provider, code", accounts(', category!="ok"')),
                 "{{provider}} {{code}} {{name}}")], legend_table=True, h=9))

    d = d.with_row(dash.Row("Institutions"))
    d = d.with_panel(_table(
        "Institutions ranked by outage share", "Share of each institution's accounts in "
        "category `institution` (outage, maintenance, connection being built or repaired), "
        f"with the counts. The outage alert fires at {OUTAGE_RATIO:.0%} and at least "
        f"{OUTAGE_MIN_ACCOUNTS} accounts. Quote the institution id when you open a ticket "
        "with the aggregator about a persistent 9xx.", "short",
        [_table_target(OUTAGE_SHARE), _table_target(OUTAGE_ACCOUNTS),
         _table_target(f"sum by ({INSTITUTION}) ({accounts()})")],
        rename={"Value #A": "Outage share", "Value #B": "Accounts in outage codes",
                "Value #C": "Accounts", "institution": "Institution",
                "institution_id": "Institution ID", "provider": "Provider", "source": "Source"},
        order=["Institution", "Institution ID", "Provider", "Source", "Outage share",
               "Accounts in outage codes", "Accounts"],
        sort_by="Outage share",
        overrides={
            "Outage share": [_unit("percentunit"),
                             _thresholds_value((None, "green"), (OUTAGE_RATIO, "red")),
                             _cell_color(common_model.TableCellDisplayMode.COLOR_BACKGROUND)],
            "Accounts in outage codes": [
                _thresholds_value((None, "text"), (OUTAGE_MIN_ACCOUNTS, "red")),
                _cell_color(common_model.TableCellDisplayMode.COLOR_TEXT)],
        }))
    d = d.with_panel(_bargauge(
        "Top institutions by outage share", "The ten institutions with the highest share of "
        f"accounts in category `institution`; red from the alert threshold ({OUTAGE_RATIO:.0%})."
        " The alert also needs at least "
        f"{OUTAGE_MIN_ACCOUNTS} such accounts (see the table).", "percentunit",
        [_target(f"topk(10, {OUTAGE_SHARE})", ACCOUNTS_LEGEND, instant=True)],
        thresholds=_steps((None, "green"), (OUTAGE_RATIO, "red")), max_val=1))
    d = d.with_panel(_bargauge(
        "OTP suspects by institution", "Accounts per institution stuck in a one-time-passcode "
        "loop (repeated MFA 185 over distinct attempts). Many at one bank: the bank now asks "
        "for a passcode on every refresh (code 931 once the aggregator recognises it). Tell "
        "those users their data only updates when they refresh in the app; Connect Fix will "
        "not stop it.", "short",
        [_target(f"topk(10, {OTP_BY_INSTITUTION})", ACCOUNTS_LEGEND, instant=True)],
        thresholds=_steps((None, "green"), (OTP_SUSPECTED_MIN, "orange"))))
    d = d.with_panel(_table(
        "Fixable accounts by institution", "Accounts a repair link resolves, by institution and "
        f"code: send Connect Fix (Finicity {_fixable('finicity')}) or the MX Connect widget "
        f"(MX {_fixable('mx')}).", "short",
        [_table_target(with_code_name(f"{INSTITUTION}, code",
                                      f"openfinance_fixable_accounts{{{FLEET}}}"))],
        rename={"Value": "Fixable accounts", "institution": "Institution",
                "institution_id": "Institution ID", "provider": "Provider", "source": "Source",
                "code": "Code", "name": "Name"},
        order=["Institution", "Institution ID", "Provider", "Source", "Code", "Name",
               "Fixable accounts"],
        sort_by="Fixable accounts"))

    d = d.with_row(dash.Row("Fixable backlog"))
    d = d.with_panel(_timeseries(
        "Fixable backlog by code", "Fixable accounts by code over time. A backlog that "
        "does not shrink means repair links are not sent or not used.\n\n" + guide, "short",
        [_target(with_code_name("provider, code", f"openfinance_fixable_accounts{{{FLEET}}}"),
                 "{{provider}} {{code}} {{name}}")], stack=True))
    d = d.with_panel(_timeseries(
        "Age of broken accounts (fixable categories)", "Median and 90th percentile of the time "
        "since accounts in the categories that hold the fixable codes (credentials, "
        "user_action, mfa, oauth) left `ok`. Filtered by source and provider only (the age "
        "histogram carries no institution).", "s",
        _quantiles(f"openfinance_broken_account_age_seconds_bucket{{{SOURCE_PROVIDER}, "
                   f'category=~"{FIXABLE_CATEGORIES}"}}', "category", "{{category}}")))
    d = d.with_panel(_bargauge(
        "Broken accounts by time since they left ok", "How long non-ok accounts have been "
        "broken (each bar counts accounts in that age bucket, upper bound in seconds). Old "
        "fixable accounts need a repair link; old 9xx need a support ticket.", "short",
        _bucket_bars("openfinance_broken_account_age_seconds_bucket"),
        thresholds=_steps((None, "orange"))))
    d = d.with_panel(_bargauge(
        "Accounts by time since last successful aggregation", "Each bar counts accounts whose "
        "last successful aggregation is that old (upper bound in seconds; never-succeeded "
        "accounts count only in +Inf).", "short",
        _bucket_bars("openfinance_account_last_success_age_seconds_bucket"),
        thresholds=_steps((None, "blue"))))

    d = _repair_funnel(d)

    d = d.with_row(dash.Row("Transitions and alerts"))
    d = d.with_panel(_timeseries(
        "Status transitions", "Accounts moving between categories, per minute, seen when a "
        "sweep lands. `ok → institution` spikes at one bank = outage; `mfa → mfa` churn = OTP "
        "loops.", "cpm",
        [_target(transitions(by="from_category, to_category"),
                 "{{from_category}} → {{to_category}}"),
         _target(or_zero(transitions()), "all transitions")], h=9))
    d = d.with_panel(_table(
        "Firing OpenFinance alerts", "Alerts firing now from the OpenFinance rules (empty when "
        "none fires). Runbooks are linked from each alert's runbook_url.", "short",
        [_table_target('sum by (alertname, severity) '
                       '(ALERTS{alertname=~"OpenFinance.+", alertstate="firing"})')],
        rename={"alertname": "Alert", "severity": "Severity", "Value": "Series firing"},
        order=["Alert", "Severity", "Series firing"], sort_by="Series firing"))

    d = d.with_row(dash.Row("Status code reference"))
    d = d.with_panel(_table(
        "Status code catalog", "Every code the exporter knows, from "
        "`openfinance_status_code_info`.\n\n" + guide, "none",
        [_table_target("group by (provider, code, name, category, fixable) "
                       '(openfinance_status_code_info{provider=~"$provider"})')],
        rename={"provider": "Provider", "code": "Code", "name": "Name",
                "category": "Category", "fixable": "Fixable", "Value": "Value"},
        order=["Provider", "Code", "Name", "Category", "Fixable"], sort_by="Code",
        overrides={"Value": [model.DynamicConfigValue(id_val="custom.hidden", value=True)]},
        w=24, h=10))
    return d


# --- One institution ---------------------------------------------------------------------------
def institution() -> dash.Dashboard:
    guide = _code_guide()
    d = _dashboard("openfinance-institution", "OpenFinance / Institution",
                   "One institution's connection health: its code mix, outage share against "
                   "the alert threshold, transitions and fixable accounts. Pick the "
                   "institution (and its id, if two share a name) at the top.")
    for v in _variables(single_institution=True):
        d = d.with_variable(v)

    d = d.with_row(dash.Row("Now"))
    d = d.with_panel(_stat("Accounts", "Accounts at the selected institution(s).", "short",
                           [_target(f"sum({accounts()})")], w=4))
    d = d.with_panel(_stat(
        "Healthy", "Share of accounts whose last aggregation succeeded (category `ok`).",
        "percentunit", [_target(share("", accounts(', category="ok"'), accounts()))],
        thresholds=_steps((None, "red"), (0.8, "orange"), (0.95, "green")), w=4))
    d = d.with_panel(_stat(
        "Outage share", "Share of accounts in category `institution`; red from the alert "
        f"threshold ({OUTAGE_RATIO:.0%}).", "percentunit",
        [_target(share("", accounts(', category="institution"'), accounts()))],
        thresholds=_steps((None, "green"), (OUTAGE_RATIO, "red")), w=4))
    d = d.with_panel(_stat(
        "Accounts in outage codes", "Accounts in category `institution`; the outage alert "
        f"needs at least {OUTAGE_MIN_ACCOUNTS}.", "short",
        [_target(f'sum({OUTAGE_SELECTOR}) '
                 f"or 0 * sum({accounts()})")],
        thresholds=_steps((None, "green"), (OUTAGE_MIN_ACCOUNTS, "red")), w=4))
    d = d.with_panel(_stat(
        "Fixable", "Accounts a repair link (Connect Fix / MX Connect widget) resolves.",
        "short",
        [_target(f"sum(openfinance_fixable_accounts{{{FLEET}}}) or 0 * sum({accounts()})")],
        thresholds=_steps((None, "green"), (1, "orange")), w=4))
    d = d.with_panel(_stat(
        "OTP suspects", "Accounts stuck in a one-time-passcode loop (repeated 185). The bank "
        "wants a passcode on every refresh: tell these users their data only updates when "
        "they refresh in the app.", "short",
        [_target(f"sum(openfinance_otp_suspected_accounts{{{FLEET}}}) or 0 * sum({accounts()})")],
        thresholds=_steps((None, "green"), (OTP_SUSPECTED_MIN, "orange")), w=4))

    d = d.with_row(dash.Row("Code mix"))
    d = d.with_panel(_timeseries(
        "Code mix over time", "Accounts by status code and name.\n\n" + guide, "short",
        [_target(with_code_name("provider, code", accounts()), "{{code}} {{name}}")],
        stack=True, legend_table=True, w=24, h=9))
    d = d.with_panel(_table(
        "Code mix now", "Accounts by code now, with the institution id to quote in a "
        "support ticket.\n\n" + guide, "short",
        [_table_target(with_code_name(f"{INSTITUTION}, code, category", accounts(),
                                      "name, fixable"))],
        rename={"Value": "Accounts", "institution": "Institution",
                "institution_id": "Institution ID", "provider": "Provider", "source": "Source",
                "code": "Code", "name": "Name", "category": "Category", "fixable": "Fixable"},
        order=["Institution", "Institution ID", "Provider", "Source", "Code", "Name",
               "Category", "Fixable", "Accounts"],
        sort_by="Accounts", w=24))

    d = d.with_row(dash.Row("Outage"))
    d = d.with_panel(_timeseries(
        "Outage share against the alert threshold", "Share of accounts in category "
        "`institution` (9xx outage, maintenance, connection being built or repaired); the "
        f"dashed line is the alert threshold ({OUTAGE_RATIO:.0%}). Nothing the customer can do;"
        " if it stays high for days, open a support ticket with the aggregator quoting the "
        "institution id.", "percentunit",
        [_target(OUTAGE_SHARE, ACCOUNTS_LEGEND)], max_val=1,
        threshold_line=_steps((None, "green"), (OUTAGE_RATIO, "red"))))
    d = d.with_panel(_timeseries(
        "Accounts in outage codes over time", "Accounts in category `institution`; the dashed line is "
        f"the alert's minimum ({OUTAGE_MIN_ACCOUNTS}).", "short",
        [_target(OUTAGE_ACCOUNTS, ACCOUNTS_LEGEND)],
        threshold_line=_steps((None, "green"), (OUTAGE_MIN_ACCOUNTS, "red"))))

    d = d.with_row(dash.Row("Across aggregators"))
    d = d.with_panel(_timeseries(
        "Which aggregator is healthier for this bank", "Share of the bank's accounts that "
        "aggregate, per aggregator (source), among accounts at ok, institution-side and "
        "aggregator-side codes (user-side errors excluded, as on /status). The bank is matched "
        "across aggregators by its institution key (home-page domain or name; "
        "`openfinance_institution_key_info`). Under 50 % is down, under 90 % degraded.",
        "percentunit", [_target(HEALTH_BY_KEY, "{{provider}} {{source}} ({{key}})")], max_val=1,
        threshold_line=_steps((None, "red"), (0.5, "orange"), (0.9, "green"))))
    d = d.with_panel(_timeseries(
        "Refresh lag: age of the last successful aggregation", "The bank's accounts by how "
        "long ago they last aggregated successfully, per aggregator (source): normal (within "
        "2 days), delayed (within 7 days), stopped (older), never. When normal is under half "
        "the accounts, refresh is delayed (Plaid's refresh interval); "
        "`institution_state:openfinance_refresh_state:info` records it. Read from the agent's "
        "state every `health.refresh_lag_interval` (5 min).", "short",
        [_target(f"sum by (source, refresh) (openfinance_institution_refresh_accounts{{{FLEET}}})",
                 "{{source}} {{refresh}}")], stack=True))

    d = d.with_row(dash.Row("Consent horizon"))
    d = d.with_panel(_timeseries(
        "Consent ending within 7, 30 and 90 days", "Accounts whose OAuth consent at the bank "
        "ends within 7, 30 and 90 days (cumulative; Finicity `authorizationEndDate`, to the "
        "day). Unrenewed, they break with 947 at the end date; with remediation on, each login "
        "gets a `consent_renewal` request `remediation.renew_before` ahead. MX publishes no "
        "consent end: MX banks show 0.", "short",
        [_target(f"sum by (within) (openfinance_consent_expiring_accounts{{{FLEET}}}) "
                 f"or 0 * sum({accounts()})", "within {{within}}")]))
    d = d.with_panel(_timeseries(
        "Share of accounts whose consent ends within 7 days", "Share of the bank's accounts "
        "whose consent ends within 7 days; the dashed line is the OpenFinanceConsentWave "
        f"threshold ({CONSENT_WAVE_RATIO:.0%}, with at least {CONSENT_WAVE_MIN_ACCOUNTS} "
        "accounts): a re-consent wave support should prepare for.", "percentunit",
        [_target(f"sum by ({INSTITUTION}) (openfinance_consent_expiring_accounts{{{FLEET}, "
                 f'within="7d"}}) / on ({INSTITUTION}) sum by ({INSTITUTION}) ({accounts()}) '
                 f"or 0 * sum by ({INSTITUTION}) ({accounts()})", ACCOUNTS_LEGEND)],
        max_val=1, threshold_line=_steps((None, "green"), (CONSENT_WAVE_RATIO, "orange"))))

    d = d.with_row(dash.Row("Transitions"))
    d = d.with_panel(_timeseries(
        "Transitions into and out of ok", "Accounts per minute that recovered (into `ok`) "
        "and that broke (out of `ok`). Breaks without recoveries at one bank = outage "
        "building up.", "cpm",
        [_target(or_zero(transitions(', to_category="ok"')), "into ok (recovered)"),
         _target(or_zero(transitions(', from_category="ok"')), "out of ok (broke)")]))
    d = d.with_panel(_timeseries(
        "Transitions by category", "Accounts per minute moving between categories.", "cpm",
        [_target(transitions(by="from_category, to_category"),
                 "{{from_category}} → {{to_category}}"),
         _target(or_zero(transitions()), "all transitions")]))

    d = d.with_row(dash.Row("Fixable accounts"))
    d = d.with_panel(_timeseries(
        "Fixable accounts by code", "Accounts a repair link resolves, by code.\n\n" + guide,
        "short",
        [_target(with_code_name("provider, code", f"openfinance_fixable_accounts{{{FLEET}}}"),
                 "{{code}} {{name}}")], stack=True))
    d = d.with_panel(_timeseries(
        "MFA accounts and OTP suspects", "Accounts in category `mfa` by code, and the OTP "
        "suspects among them. 185 that keeps coming back after a fix, or 931, means the bank "
        "asks for a passcode on every refresh: tell users to refresh in the app themselves.",
        "short",
        [_target(f'sum by (code) ({MFA_SELECTOR})',
                 "{{code}} (mfa)"),
         _target(f"sum(openfinance_otp_suspected_accounts{{{FLEET}}}) or 0 * sum({accounts()})",
                 "OTP suspects")]))
    return d


# --- Agent health ------------------------------------------------------------------------------
def agent_health() -> dash.Dashboard:
    d = _dashboard("openfinance-agent-health", "OpenFinance / Agent health",
                   "The exporter itself: sweeps, upstream API traffic, rate limiting, "
                   "freshness of the data and the state database.")
    for v in _variables():
        d = d.with_variable(v)
    d = d.with_variable(
        dash.IntervalVariable("window").label("Sweep window")
        .description("Window for sweep-based rates; sweeps are rare, so wider than "
                     "$__rate_interval.")
        .values("15m,1h,6h,1d")
        .current(model.VariableOption(text="1h", value="1h", selected=True)))

    up_fallback = f"0 * sum by (source) (openfinance_source_up{{{AGENT}}})"
    d = d.with_row(dash.Row("Status"))
    d = d.with_panel(_stat(
        "Since last successful sweep", "Time since each source's last complete sweep. Red "
        f"from {_duration_text(STALE_AFTER_SECONDS)}, when the data-stale alert fires: gauges keep "
        "their last values while sweeps fail, so the fleet dashboards may be out of date.",
        "s",
        [_target("time() - max by (source) "
                 f"(openfinance_sweep_last_success_timestamp_seconds{{{AGENT}}} > 0)", "{{source}}")],
        thresholds=_steps((None, "green"), (STALE_AFTER_SECONDS, "red")), w=5))
    d = d.with_panel(_stat(
        "Source state", "1 while a source may sweep; 0 once it stopped itself (e.g. the "
        "aggregator refused the credentials — fix them and restart; five failed logins lock "
        "the partner out).", "none",
        [_target(f"max by (source) (openfinance_source_up{{{AGENT}}})", "{{source}}")],
        thresholds=_steps((None, "red"), (1, "green")), graph=False, w=4,
        mappings=[model.ValueMap(options={
            "0": model.ValueMappingResult(text="stopped", color="red"),
            "1": model.ValueMappingResult(text="up", color="green")})]))
    d = d.with_panel(_stat(
        "Sweep progress", "Share of customers/users done by the running sweep; 100 % when "
        "idle.", "percentunit",
        [_target(f"min by (source) (openfinance_sweep_progress_ratio{{{AGENT}}})", "{{source}}")],
        w=5))
    d = d.with_panel(_stat(
        "Auth failures", "Logins refused by the aggregator in the sweep window. Any is "
        "serious: the source stops to avoid locking the partner out.", "short",
        [_target(f"sum by (source) (increase(openfinance_upstream_auth_failures_total{{{AGENT}}}"
                 f"[$window])) or {up_fallback}", "{{source}}")],
        thresholds=_steps((None, "green"), (1, "red")), w=5))
    d = d.with_panel(_stat(
        "Build", "Exporter version.", "none",
        [_target("max by (version) (openfinance_build_info)", "{{version}}", instant=True)],
        graph=False, w=5).text_mode(common_model.BigValueTextMode.NAME))

    d = d.with_row(dash.Row("Sweeps"))
    d = d.with_panel(_timeseries(
        "Sweep results", "Sweeps finished per sweep window, by result. `partial` keeps "
        "last-known values for the customers it could not read; `failed` changes nothing.",
        "short",
        [_target(f"sum by (source, result) (increase(openfinance_sweeps_total{{{AGENT}}}"
                 "[$window]))", "{{source}} {{result}}")]))
    d = d.with_panel(_timeseries(
        "Sweep duration", "p50 and p90 of sweep duration over the sweep window, and the mean.",
        "s",
        [*_quantiles(f"rate(openfinance_sweep_duration_seconds_bucket{{{AGENT}}}[$window])",
                     "source", "{{source}}"),
         _target(f"sum by (source) (rate(openfinance_sweep_duration_seconds_sum{{{AGENT}}}"
                 "[$window])) / sum by (source) "
                 f"(rate(openfinance_sweep_duration_seconds_count{{{AGENT}}}[$window]))",
                 "mean {{source}}")]))
    d = d.with_panel(_timeseries(
        "Time since last successful sweep", "The dashed line is the data-stale alert "
        f"threshold ({_duration_text(STALE_AFTER_SECONDS)}).", "s",
        [_target("time() - max by (source) "
                 f"(openfinance_sweep_last_success_timestamp_seconds{{{AGENT}}} > 0)", "{{source}}")],
        threshold_line=_steps((None, "green"), (STALE_AFTER_SECONDS, "red"))))
    d = d.with_panel(_timeseries(
        "Sweep progress over time",
        "Share of customers/users done by the running sweep (1 when idle).",
        "percentunit",
        [_target(f"min by (source) (openfinance_sweep_progress_ratio{{{AGENT}}})",
                 "{{source}}")], max_val=1))
    d = d.with_panel(_timeseries(
        "Accounts: state, last sweep, fleet gauges", "Accounts held in the state database, "
        "seen by the last finished sweep, and summed from the fleet gauges (the last one "
        "follows the provider and institution filters). A sweep seeing far fewer accounts "
        "than the state holds was probably cut short.", "short",
        [_target(f"max by (source) (openfinance_state_accounts{{{AGENT}}})",
                 "{{source}} state"),
         _target(f"max by (source) (openfinance_sweep_accounts{{{AGENT}}})",
                 "{{source}} last sweep"),
         _target(f"sum by (source) ({accounts()})", "{{source}} fleet gauges")], w=24))

    d = d.with_row(dash.Row("Upstream API"))
    requests = f"openfinance_upstream_requests_total{{{AGENT}}}"
    d = d.with_panel(_timeseries(
        "Upstream requests by endpoint", "Requests to the aggregator per second, by route "
        "template and status code (or error kind).", "reqps",
        [_target(f"sum by (source, endpoint, status_code) (rate({requests}[$__rate_interval]))",
                 "{{endpoint}} {{status_code}}")], legend_table=True))
    d = d.with_panel(_timeseries(
        "Upstream error ratio by endpoint", "Share of requests that did not get a 2xx "
        "(4xx, 5xx, timeouts, connection errors). 401/403 on the token endpoint: check the "
        "partner credentials before five failures lock the partner out.", "percentunit",
        [_target(share("source, endpoint",
                       f"rate(openfinance_upstream_requests_total{{{AGENT}, "
                       'status_code!~"2.."}[$__rate_interval])',
                       f"rate({requests}[$__rate_interval])"), "{{endpoint}}")], max_val=1))
    d = d.with_panel(_timeseries(
        "Upstream latency by endpoint", "p50 and p99 of request duration by route template.",
        "s",
        _quantiles(f"rate(openfinance_upstream_request_duration_seconds_bucket{{{AGENT}}}"
                   "[$__rate_interval])", "source, endpoint", "{{endpoint}}", (0.5, 0.99)),
        legend_table=True))
    d = d.with_panel(_timeseries(
        "Retries by reason", "Retried upstream requests per second: rate_limited (429, "
        "honours Retry-After), server_error, timeout, connect_error, token_expired.", "reqps",
        [_target("sum by (source, reason) "
                 f"(rate(openfinance_upstream_retries_total{{{AGENT}}}[$__rate_interval]))",
                 "{{source}} {{reason}}"),
         _target(or_zero("sum (rate(openfinance_upstream_retries_total"
                         f"{{{AGENT}}}[$__rate_interval]))"), "all retries")]))
    d = d.with_panel(_timeseries(
        "Rate limiting", "Requests answered 429 and retries caused by rate limiting, per "
        "second. Sustained 429s slow sweeps down: spread schedules or ask the aggregator for "
        "a higher limit.", "reqps",
        [_target(f"sum by (source) (rate(openfinance_upstream_requests_total{{{AGENT}, "
                 'status_code="429"}[$__rate_interval])) '
                 f"or 0 * sum by (source) (rate({requests}[$__rate_interval]))",
                 "{{source}} 429 responses"),
         _target("sum by (source) (rate(openfinance_upstream_retries_total"
                 f'{{{AGENT}, reason="rate_limited"}}[$__rate_interval])) '
                 f"or 0 * sum by (source) (rate({requests}[$__rate_interval]))",
                 "{{source}} rate-limited retries")]))
    d = d.with_panel(_timeseries(
        "Invalid records and unknown codes", "Upstream payloads that could not be used, and "
        "records with a status code not in the catalog (counted as `unknown`), per sweep "
        "window. Unknown codes: add them to the catalog.", "short",
        [_target("sum by (source) (increase(openfinance_invalid_records_total"
                 f"{{{AGENT}}}[$window])) or {up_fallback}", "{{source}} invalid records"),
         _target("sum by (source) (increase(openfinance_unknown_codes_total"
                 f"{{{AGENT}}}[$window])) or {up_fallback}", "{{source}} unknown codes")]))

    d = _push(d, up_fallback)

    d = d.with_row(dash.Row("Repair loop"))
    d = d.with_panel(_timeseries(
        "Fix requests", "Repair-loop fix requests per sweep window, by result (delivered, "
        "retried, failed, held, dead). Zero unless remediation is switched on.", "short",
        [_target("sum by (source, result) (increase(openfinance_fix_requests_total"
                 f"{{{AGENT}}}[$window]))", "{{source}} {{result}}"),
         _target("sum by (source) (increase(openfinance_fix_requests_total"
                 f"{{{AGENT}}}[$window])) or {up_fallback}", "{{source}} all")], w=24))
    return d


def _push(d: dash.Dashboard, up_fallback: str) -> dash.Dashboard:
    """The "Push" row of the agent-health dashboard: webhook deliveries and their re-reads."""
    events = f"openfinance_webhook_events_total{{{AGENT}"
    off = "Zero unless the source has `webhooks:` configured."
    d = d.with_row(dash.Row("Push"))
    d = d.with_panel(_timeseries(
        "Webhook events", "Webhook deliveries answered per sweep window, by kind and result "
        "(accepted, duplicate, ignored; refused: bad_signature, unauthorized, too_large, "
        f"malformed). {off}", "short",
        [_target(f"sum by (source, kind, result) (increase({events}}}[$window]))",
                 "{{source}} {{kind}} {{result}}"),
         _target(f"sum by (source) (increase({events}}}[$window])) or {up_fallback}",
                 "{{source}} all events")], legend_table=True))
    d = d.with_panel(_timeseries(
        "Rejected webhook deliveries", "Deliveries refused for a bad signature or wrong "
        f"credentials in the alert's window ({WEBHOOK_REJECTED_WINDOW}); the dashed line is "
        f"the OpenFinanceWebhookDeliveriesRejected threshold ({WEBHOOK_REJECTED_MIN}). With "
        "no accepted events beside them, a secret rotated on one side only; with accepted "
        f"events going on, someone probes the endpoint. {off}", "short",
        [_target(f'sum by (source, result) (increase({events}, '
                 f'result=~"bad_signature|unauthorized"}}[{WEBHOOK_REJECTED_WINDOW}])) '
                 f"or {up_fallback}", "{{source}} {{result}}"),
         _target(f'sum by (source) (increase({events}, result="accepted"}}'
                 f"[{WEBHOOK_REJECTED_WINDOW}])) or {up_fallback}", "{{source}} accepted")],
        threshold_line=_steps((None, "green"), (WEBHOOK_REJECTED_MIN, "red"))))
    refresh = f"openfinance_push_refresh_duration_seconds_bucket{{{AGENT}}}"
    d = d.with_panel(_timeseries(
        "Webhook event to /metrics latency", "p50 and p99 over the sweep window of the time "
        "from a webhook event's arrival to its owner's re-read applied to /metrics (target: "
        f"p99 under 2 s). Empty while no event was applied. {off}", "s",
        _quantiles(f"rate({refresh}[$window])", "source", "{{source}}", (0.5, 0.99))))
    d = d.with_panel(_timeseries(
        "Failed webhook re-reads", "Events whose owner re-read failed per sweep window: "
        "retried (another attempt is scheduled) or given_up (still failing after "
        "webhooks.give_up_after: acknowledged but not applied; the next sweep sees the owner). "
        f"{off}", "short",
        [_target("sum by (source, result) (increase(openfinance_push_refresh_failures_total"
                 f"{{{AGENT}}}[$window])) or {up_fallback}", "{{source}} {{result}}")]))
    d = d.with_panel(_timeseries(
        "Deliveries not forwarded to their shard", "Deliveries for another shard's owners "
        "(webhooks.peers) that could not be forwarded per sweep window, so their senders were "
        "told to retry (503): unreachable (the owner's pod refused, reset or timed out) or "
        "unavailable (it answered 404 while starting, or 5xx). Lasting: "
        "OpenFinanceWebhookForwardFailing. Zero unless the agent is sharded with "
        "webhooks.peers.", "short",
        [_target("sum by (source, reason) (increase(openfinance_webhook_forward_failures_total"
                 f"{{{AGENT}}}[$window])) or {up_fallback}", "{{source}} {{reason}}")]))
    return d


# --- Output ------------------------------------------------------------------------------------
BUILDERS = {
    "openfinance-fleet-overview": fleet_overview,
    "openfinance-institution": institution,
    "openfinance-agent-health": agent_health,
}


def _number_panels(dashboard_json: dict) -> None:
    """Give every panel (rows included) a unique id, in layout order."""
    n = 0
    for panel in dashboard_json.get("panels", []):
        n += 1
        panel["id"] = n
        for inner in panel.get("panels", []):
            n += 1
            inner["id"] = n


def build_templates() -> dict[str, str]:
    """File name → the dashboard's JSON text with each alert parameter as a placeholder
    (``dashboards/templates/``, which ``helm/sync.py`` copies into the chart). Filled with the
    defaults, each is the committed dashboard byte for byte (``helm/sync.py`` checks it)."""
    module = sys.modules[__name__]
    markers = _markers()
    saved = {constant: getattr(module, constant) for constant in (*markers, "IN_OUTAGE")}
    try:
        for constant, (marker, _) in markers.items():
            setattr(module, constant, marker)
        module.IN_OUTAGE = _in_outage()
        texts = {name: render(data) for name, data in build_all().items()}
    finally:
        for constant, value in saved.items():
            setattr(module, constant, value)
    for marker, json_text in markers.values():
        if json_text:
            for name, text in texts.items():
                texts[name] = text.replace(json_text, f"[[ {marker.name} ]]")
    for text in texts.values():
        assert not any(json_text and json_text in text for _, json_text in markers.values()), \
            "a marker was left in a template"
    return texts


def build_all() -> dict[str, dict]:
    """File name (``<uid>.json``) → dashboard JSON."""
    out: dict[str, dict] = {}
    for uid, build in BUILDERS.items():
        data = json.loads(json.dumps(build().build(), cls=JSONEncoder))
        _number_panels(data)
        assert data["uid"] == uid
        out[f"{uid}.json"] = data
    return out


def render(dashboard_json: dict) -> str:
    return json.dumps(dashboard_json, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def iter_panels(dashboard_json: dict) -> Iterator[dict]:
    """Every non-row panel, including panels nested in collapsed rows."""
    for panel in dashboard_json.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def iter_queries(dashboard_json: dict) -> list[tuple[str, str]]:
    """``(panel title, PromQL expression)`` for every query of every panel."""
    return [(panel.get("title", ""), target["expr"])
            for panel in iter_panels(dashboard_json)
            for target in panel.get("targets", [])
            if target.get("expr")]


def queries_by_panel(dashboard_json: dict) -> dict[str, list[str]]:
    """Panel title → its queries; a panel has data when any of them returns a series."""
    out: dict[str, list[str]] = {}
    for title, expr in iter_queries(dashboard_json):
        out.setdefault(title, []).append(expr)
    return out


def iter_variable_queries(dashboard_json: dict) -> list[tuple[str, str]]:
    """``(variable name, query)`` for every query variable (``label_values(…)``)."""
    out = []
    for var in dashboard_json.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var["query"]
            out.append((var["name"], query if isinstance(query, str) else query["query"]))
    return out


_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")


def substitute_variables(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace Grafana variables (``$source``, ``${institution:regex}``, ``$__rate_interval``)
    with concrete values, as Grafana would before sending the query.

    ``values`` overrides :data:`DEFAULT_VARIABLE_VALUES`; a variable with no value is an error.
    """
    merged = {**DEFAULT_VARIABLE_VALUES, **(values or {})}

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(5)
        if name not in merged:
            raise KeyError(f"no value for Grafana variable ${name} in {expr!r}")
        return merged[name]

    return _VARIABLE.sub(repl, expr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the committed JSON differs from what would be written")
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR,
                        help="directory to write to (default: dashboards/)")
    args = parser.parse_args(argv)

    stale = []
    outputs = {name: render(data) for name, data in build_all().items()}
    outputs.update({f"{TEMPLATES}/{name}": text for name, text in build_templates().items()})
    if not args.check:
        (args.out / TEMPLATES).mkdir(exist_ok=True)
    for name, text in outputs.items():
        path = args.out / name
        if args.check:
            current = path.read_text(encoding="utf-8") if path.exists() else ""
            if current != text:
                stale.append(name)
                sys.stderr.writelines(difflib.unified_diff(
                    current.splitlines(keepends=True), text.splitlines(keepends=True),
                    f"committed/{name}", f"generated/{name}", n=1))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python -m dashboards.generate",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
