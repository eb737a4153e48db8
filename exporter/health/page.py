"""``GET /status``: the health report as a plain HTML page, for a support lead.

Server-rendered, no JavaScript; it reloads itself every minute. One row group per
institution key with a row per aggregator (source), so two aggregators of one bank sit side
by side, each with the share of new links the routing advice gives it ("Route new links
to") and its last 24 hours as an inline SVG (the ok share per quarter hour, no external
assets, with a text alternative). Every value from upstream (names, ids, keys) is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Protocol

from exporter.health.history import Pair, Point
from exporter.health.report import (
    HealthReport,
    InstitutionHealth,
    ProviderHealth,
    RefreshLag,
    rfc3339,
)
from exporter.sources.institution import INSTITUTION, ONLINE

_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;background:#fff}
h1{font-size:1.4rem;margin:0 0 .3rem}
.meta{color:#555;max-width:60rem}
table{border-collapse:collapse;margin-top:1rem;min-width:60rem}
th,td{border-bottom:1px solid #ddd;padding:.35rem .6rem;text-align:left;vertical-align:top}
thead th{background:#f3f3f3;position:sticky;top:0}
tbody th{font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
small{color:#666}
.state{display:inline-block;padding:0 .45rem;border-radius:.6rem;font-weight:600}
.state-healthy{background:#dff3e4;color:#14532d}
.state-degraded{background:#fff1c2;color:#713f12}
.state-down{background:#fde2e1;color:#7f1d1d}
.state-insufficient_data{background:#eee;color:#444}
.warn{color:#7f1d1d;font-weight:600}
.route-none{color:#7f1d1d}
svg.spark{display:block}
"""
_HEADERS = ("Institution", "Aggregator (source)", "Accounts", "State", "OK",
            "Institution errors", "Aggregator errors", "User errors (excluded)",
            "Declared by the aggregator", "Refresh")
ROUTE_HEADER = "Route new links to"
HISTORY_HEADER = "Last 24 h"
HISTORY_WINDOW = 86400.0
_SPARK_W, _SPARK_H = 120, 28
_STATE_COLOUR = {"down": "#b91c1c", "degraded": "#b45309", "healthy": "#15803d"}
_RULE_WORDS = {"away": "routed away", "all_down": "down everywhere: defaults",
               "degraded_only": "none healthy: degraded share"}


class RouteAdvice(Protocol):
    """One institution's routing advice (``exporter.routing.advisor.InstitutionAdvice``)."""

    key: str
    shares: dict[str, int]
    rule: str
    reason: str


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    hours = seconds / 3600
    return f"{hours:.0f} h" if hours < 48 else f"{hours / 24:.1f} d"


def _declared(p: ProviderHealth) -> str:
    if p.declared is None:
        return "<td>—</td>" if p.provider == "finicity" else "<td><small>not published</small></td>"
    main = p.declared.status or "—"
    others = ", ".join(f"{escape(k)} {escape(v)}" for k, v in p.declared.statuses
                       if k != INSTITUTION and v != main)  # only what differs
    warn = ""
    if p.state == "down" and p.declared.get(INSTITUTION) == ONLINE:
        warn = '<br><span class="warn">declared online, observed down</span>'
    extra = f"<br><small>{others}</small>" if others else ""
    return f'<td data-declared="{escape(main)}">{escape(main)}{extra}{warn}</td>'


def _lag_detail(lag: RefreshLag) -> str:
    if lag.counts is None:
        return f"median {_age(lag.median_age_seconds)} (source)"
    return f"{lag.counts.normal} of {lag.counts.total} within 2 d"


def _route(p: ProviderHealth, advice: RouteAdvice | None) -> str:
    """The share of new links this row's aggregator gets; the reason as its title."""
    if advice is None or p.provider not in advice.shares:
        return '<td class="num" data-route="">—</td>'
    share = advice.shares[p.provider]
    words = _RULE_WORDS.get(advice.rule, "")
    note = f"<br><small>{escape(words)}</small>" if words and (share == 0 or
                                                                advice.rule != "away") else ""
    cls = "num route-none" if share == 0 else "num"
    return (f'<td class="{cls}" data-route="{share}" title="{escape(advice.reason)}">'
            f"<strong>{share} %</strong>{note}</td>")


def sparkline(points: list[Point], now: float, window: float = HISTORY_WINDOW) -> str:
    """A cell with the ok share over the last ``window`` seconds as an inline SVG: a line per
    quarter hour, a dot on each degraded or down point and on the latest one; the same in
    words for screen readers (``aria-label`` and ``<title>``)."""
    shown = [p for p in points if p.ts >= now - window]
    if not shown:
        return '<td data-points="0"><small>no history yet</small></td>'
    start, kx, ky = now - window, (_SPARK_W - 4) / window, _SPARK_H - 4
    at = [(p, (p.ts - start) * kx + 2, 2 + (1 - (p.ok or 0.0)) * ky) for p in shown]
    measured = [p for p in shown if p.ok is not None]
    line = " ".join(f"{x:.1f},{y:.1f}" for p, x, y in at if p.ok is not None)
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2" fill="{_STATE_COLOUR.get(p.state, "#777")}"/>'
        for p, x, y in at if p.state in ("down", "degraded") or p is shown[-1])
    last = shown[-1]
    words = [f"OK share over the last {window / 3600:g} h, {len(shown)} points: now "
             f"{_pct(last.ok)} ({last.state.replace('_', ' ')})"]
    if measured:
        low = min(measured, key=lambda p: (p.ok, p.ts))
        words.append(f"lowest {_pct(low.ok)} ({low.state.replace('_', ' ')}) at {rfc3339(low.ts)}")
    bad = sum(p.state in ("down", "degraded") for p in shown)
    if bad:
        words.append(f"{bad} of them degraded or down")
    text = escape("; ".join(words))
    polyline = (f'<polyline points="{line}" fill="none" stroke="#555" stroke-width="1.2"/>'
                if len(measured) > 1 else "")
    return (f'<td data-points="{len(shown)}"><svg class="spark" role="img" '
            f'aria-label="{text}" width="{_SPARK_W}" height="{_SPARK_H}" '
            f'viewBox="0 0 {_SPARK_W} {_SPARK_H}" xmlns="http://www.w3.org/2000/svg">'
            f"<title>{text}</title>"
            f'<rect x="0" y="0" width="{_SPARK_W}" height="{_SPARK_H}" fill="#f6f6f6"/>'
            f"{polyline}{dots}</svg></td>")


def _row(p: ProviderHealth, advice: RouteAdvice | None, routing: bool,
         spark: str | None = None) -> str:
    b = p.breakdown or {}
    return (
        f'<td>{escape(p.source)} <small>({escape(p.provider)}, id {escape(p.institution_id)})</small></td>'
        f'<td class="num">{p.accounts}</td>'
        f'<td><span class="state state-{escape(p.state)}">{escape(p.state.replace("_", " "))}</span></td>'
        f"{spark or ''}"
        f"{_route(p, advice) if routing else ''}"
        f'<td class="num">{_pct(b.get("ok"))}</td>'
        f'<td class="num">{_pct(b.get("institution"))}</td>'
        f'<td class="num">{_pct(b.get("aggregator"))}</td>'
        f'<td class="num">{_pct(p.user_share)}</td>'
        f"{_declared(p)}"
        f'<td>{escape(p.refresh.state)} <small>{_lag_detail(p.refresh)}</small></td>'
    )


def _group(inst: InstitutionHealth, routing: Mapping[str, RouteAdvice] | None,
           history: Mapping[Pair, list[Point]] | None, now: float) -> str:
    rows = []
    for i, p in enumerate(inst.providers):
        attrs = (f' data-key="{escape(inst.key)}" data-source="{escape(p.source)}"'
                 f' data-institution-id="{escape(p.institution_id)}" data-state="{escape(p.state)}"')
        head = ""
        if i == 0:
            head = (f'<th scope="rowgroup" rowspan="{len(inst.providers)}">{escape(inst.name)}'
                    f"<br><small>{escape(inst.key)}</small></th>")
        advice = None if routing is None else routing.get(inst.key)
        spark = (None if history is None
                 else sparkline(history.get((inst.key, p.provider), []), now))
        rows.append(f"<tr{attrs}>{head}{_row(p, advice, routing is not None, spark)}</tr>")
    return f'<tbody data-key="{escape(inst.key)}">{"".join(rows)}</tbody>'


def render_status_page(report: HealthReport, json_path: str = "/api/v1/institutions",
                       routing: Mapping[str, RouteAdvice] | None = None,
                       history: Mapping[Pair, list[Point]] | None = None) -> str:
    """The page; with ``routing`` (advice per institution key), the "Route new links to"
    column and a link to its JSON; with ``history`` ((key, provider) → points), the last
    24 hours per row."""
    data = report.as_json()
    t = report.thresholds
    counts: dict[str, int] = {}
    for inst in report.institutions:
        counts[inst.worst_state] = counts.get(inst.worst_state, 0) + 1
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("down", "degraded", "healthy"))
    headers = list(_HEADERS)
    if history is not None:
        headers.insert(headers.index("State") + 1, HISTORY_HEADER)
    if routing is not None:
        headers.insert(headers.index("State") + 1 + (history is not None), ROUTE_HEADER)
    head = "".join(f'<th scope="col">{h}</th>' for h in headers)
    body = "".join(_group(i, routing, history, report.generated_at)
                   for i in report.institutions) or (
        f'<tbody><tr><td colspan="{len(headers)}">No accounts yet.</td></tr></tbody>')
    route_note = "" if routing is None else (
        f"{ROUTE_HEADER}: the share of new links the routing advice gives each aggregator "
        f'(<a href="/api/v1/routing">JSON</a>, <a href="/api/v1/routing?format=ucp">UCP '
        f"preferences</a>; hover a share for the reason). ")
    if history is not None:
        route_note += (f"{HISTORY_HEADER}: the ok share per quarter hour (dots: degraded or "
                       f"down; <a href=\"{escape(json_path)}?history=24h\">JSON</a>). ")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta http-equiv="refresh" content="60">'
        "<title>Institution status · OpenFinance Exporter</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Institution status</h1>"
        f'<p class="meta">Generated {escape(data["generated_at"])} from snapshot '
        f"{report.snapshot_version}. <strong>{summary}</strong>. "
        f"An aggregator's row is <em>down</em> when under {t.down_below:.0%} of its accounts "
        f"at the institution aggregate (among accounts at ok, institution-side and "
        f"aggregator-side codes), <em>degraded</em> under {t.degraded_below:.0%}, and has no "
        f"state below {t.min_accounts} such accounts. User-side errors (credentials, MFA, OAuth "
        f"consent, closed accounts) are shown but excluded, as Plaid does. Refresh: median age "
        f"of the last successful aggregation, for the whole source. {route_note}"
        f'<a href="{escape(json_path)}">JSON</a></p>'
        f'<table id="institutions"><thead><tr>{head}</tr></thead>{body}</table>'
        "</body></html>")
