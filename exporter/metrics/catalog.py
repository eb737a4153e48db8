"""Every metric the exporter exposes: name, type, labels, help and buckets, in one table.

This is the extension point for new metrics. The collectors and the self-metrics are built
from :data:`METRICS`, ``docs/metrics.md`` is generated from it and checked by a test, and the
dashboards' and rules' contract tests read it, so a metric cannot exist in one place and not
in the others. To add a metric (a feature's webhook, remediation or institution-health
series):

1. add a :class:`MetricSpec` to :data:`METRICS` (counters without ``_total``);
2. if the value comes from the tracker's snapshot, mark it ``from_snapshot=True`` and yield it
   from a collector in :mod:`exporter.metrics.collectors`; otherwise it becomes a
   ``prometheus_client`` instrument of :class:`exporter.metrics.observers.AgentMetrics`
   by itself (``AgentMetrics.instrument("webhook_events")``), and the feature's observer
   Protocol gets a method there that sets it;
3. ``python -m exporter.metrics > docs/metrics.md``.

This module imports nothing from the exporter, so generators and tests can read it alone.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "openfinance_"

FLEET_LABELS = ("source", "provider", "institution_id", "institution")

# Buckets for the age "gauge histograms" (seconds): 1 h … 90 d.
AGE_BUCKETS = (3600.0, 6 * 3600.0, 86400.0, 2 * 86400.0, 3 * 86400.0, 7 * 86400.0,
               14 * 86400.0, 30 * 86400.0, 90 * 86400.0)
SWEEP_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
PUSH_REFRESH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800)
FORWARD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
REQUEST_DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Delivered fix request → login back at ok: 1 h … 30 d.
FIX_RESOLUTION_BUCKETS = (3600.0, 6 * 3600.0, 12 * 3600.0, 86400.0, 2 * 86400.0, 3 * 86400.0,
                          7 * 86400.0, 14 * 86400.0, 30 * 86400.0)


@dataclass(frozen=True, slots=True)
class MetricSpec:
    name: str
    type: str  # gauge | counter | histogram | gaugehistogram | info
    labels: tuple[str, ...]
    help: str
    group: str  # fleet | agent: the section of docs/metrics.md
    buckets: tuple[float, ...] = ()  # histograms only
    # True: rendered by a collector from the tracker's snapshot (cached per snapshot);
    # False: a prometheus_client instrument that an observer sets.
    from_snapshot: bool = False

    @property
    def short(self) -> str:
        """The name without the ``openfinance_`` prefix (``sweeps``)."""
        return self.name.removeprefix(PREFIX)

    @property
    def series_names(self) -> tuple[str, ...]:
        """Names of the samples Prometheus stores for this metric."""
        if self.type == "counter":
            return (self.name + "_total",)
        if self.type == "histogram":
            return (self.name + "_bucket", self.name + "_sum", self.name + "_count")
        if self.type == "gaugehistogram":
            return (self.name + "_bucket", self.name + "_gsum", self.name + "_gcount")
        return (self.name,)


def _m(name: str, type_: str, labels: tuple[str, ...], help_: str, group: str, *,
       buckets: tuple[float, ...] = (), from_snapshot: bool | None = None) -> MetricSpec:
    """A spec; fleet metrics come from the snapshot unless told otherwise."""
    if from_snapshot is None:
        from_snapshot = group == "fleet"
    return MetricSpec(PREFIX + name, type_, labels, help_, group, buckets, from_snapshot)


# Counter names are given without ``_total``; the exposition adds it. Features append their
# specs here (see the module docstring); the order is the order of docs/metrics.md.
METRICS: tuple[MetricSpec, ...] = (
    _m("accounts", "gauge", (*FLEET_LABELS, "code", "category"),
       "Accounts (Finicity) or members (MX) whose last known status is this code.", "fleet"),
    _m("fixable_accounts", "gauge", (*FLEET_LABELS, "code"),
       "Accounts at a code that Connect Fix (or the MX Connect widget) can resolve.", "fleet"),
    _m("otp_suspected_accounts", "gauge", FLEET_LABELS,
       "Accounts whose last N distinct aggregation attempts all ended in MFA (185), or that "
       "fell back into 185 after a fix.", "fleet"),
    _m("status_transitions", "counter", (*FLEET_LABELS, "from_category", "to_category"),
       "Accounts that moved between categories, counted when a sweep sees the change.", "fleet"),
    _m("broken_account_age_seconds", "gaugehistogram", ("source", "provider", "category"),
       "Time since each non-ok account left the ok category (to the minute).", "fleet"),
    _m("account_last_success_age_seconds", "gaugehistogram", ("source", "provider"),
       "Time since each account's last successful aggregation, to the minute "
       "(never-succeeded accounts count only in +Inf).", "fleet"),
    _m("consent_expiring_accounts", "gauge", (*FLEET_LABELS, "within"),
       "Accounts whose OAuth consent ends within 7d, 30d or 90d from now (cumulative; "
       "Finicity authorizationEndDate when authorizationExpires is true, to the day; MX "
       "publishes no consent end).", "fleet"),
    _m("status_code_info", "gauge", ("provider", "code", "name", "category", "fixable"),
       "The status-code catalog, one series per code; value 1.", "fleet"),
    # Institution health (exporter/health): per institution with accounts, folded like the
    # others; re-rendered when declared statuses, keys or refresh lag change between sweeps
    # (InstitutionHealthCollector, exporter/metrics/snapshot_text.py).
    _m("institution_declared_status", "gauge", (*FLEET_LABELS, "product", "status"),
       "What the aggregator declares about an institution (Finicity status: "
       "product=\"institution\"; beta productionStatus: product=\"overall\" and per product); "
       "value 1.", "fleet"),
    _m("institution_key_info", "gauge", ("source", "provider", "institution_id", "key"),
       "The institution key joining one bank across aggregators (home-page domain, else "
       "name:<normalised name>, or the mapping file's); value 1.", "fleet"),
    _m("institution_refresh_accounts", "gauge", (*FLEET_LABELS, "refresh"),
       "Accounts of an institution by the age of their last successful aggregation: refresh="
       "normal (within 2 days), delayed (within 7 days), stopped (older), never; read from "
       "the state database every health.refresh_lag_interval (5 min).",
       "fleet"),
    # Routing advice (exporter/routing): per institution key with accounts, rendered live.
    _m("routing_share", "gauge", ("key", "institution", "provider"),
       "Recommended share of new links (percent, integers summing to 100 per key) to this "
       "aggregator for the institution key, after routing.hold / recover_hold.", "fleet"),
    _m("sweeps", "counter", ("source", "result"),
       "Sweeps finished, by result: success, partial or failed.", "agent"),
    _m("sweep_duration_seconds", "histogram", ("source",),
       "Wall-clock duration of sweeps.", "agent", buckets=SWEEP_DURATION_BUCKETS),
    _m("sweep_last_success_timestamp_seconds", "gauge", ("source",),
       "When the last successful (complete) sweep finished, epoch seconds.", "agent"),
    _m("sweep_accounts", "gauge", ("source",),
       "Accounts seen by the last finished sweep.", "agent"),
    _m("sweep_progress_ratio", "gauge", ("source",),
       "Share of customers (users) done by the running sweep; 1 when idle.", "agent"),
    _m("state_write_failures", "counter", ("source", "reason"),
       "Sweeps that failed because the state database could not be written, by reason: "
       "disk_full, read_only, locked, corrupt, io_error (a file-size limit shows as io_error). "
       "The sweep counts as failed and every gauge keeps its last value.", "agent"),
    _m("state_recovered", "counter", (),
       "State files found corrupt (not a database, or failing SQLite's quick_check) at start, "
       "moved aside as <name>.corrupt-<timestamp>; the agent started from an empty state.",
       "agent"),
    _m("upstream_requests", "counter", ("source", "endpoint", "status_code"),
       "HTTP requests to the aggregator, by route template and status code (or error kind).",
       "agent"),
    _m("upstream_request_duration_seconds", "histogram", ("source", "endpoint"),
       "Latency of requests to the aggregator.", "agent", buckets=REQUEST_DURATION_BUCKETS),
    _m("upstream_retries", "counter", ("source", "reason"),
       "Retried upstream requests, by reason.", "agent"),
    _m("upstream_auth_failures", "counter", ("source",),
       "Authentication refused by the aggregator; the source stops sweeping.", "agent"),
    _m("source_up", "gauge", ("source",),
       "1 while a source may sweep; 0 once stopped (e.g. after refused credentials).", "agent"),
    _m("invalid_records", "counter", ("source", "reason"),
       "Upstream payloads or records that could not be used, counted once by the source; reason: "
       "malformed_json, missing_field, invalid_code, invalid_id (skipped), invalid_timestamp "
       "(kept without that date); institution records: malformed_institution, "
       "invalid_declared_status (ignored), unknown_declared_status (shown as other).", "agent"),
    _m("unknown_codes", "counter", ("source", "provider"),
       "Records carrying a status code not in the catalog (counted as category unknown).",
       "agent"),
    _m("upstream_drift", "counter", ("source", "provider", "kind"),
       "Ways the upstream moved under the agent, by kind: version_refused (406/415 or an "
       "error naming the API version), field_missing (the status field absent from more "
       "than drift.missing_share of a sweep's records; those accounts keep their last "
       "state), unknown_status (a record with a status outside the catalog), shape (an "
       "answer that fits no model).", "agent"),
    _m("upstream_api_info", "gauge", ("source", "provider", "version"),
       "The upstream API version a source speaks (MX: its Accept-Version; Finicity: v1, "
       "the version in its paths); value 1.", "agent"),
    _m("webhook_events", "counter", ("source", "kind", "result"),
       "Webhook deliveries answered, by event kind (Finicity eventType, MX connection_status / "
       "member / aggregation, txpush_*; other, or unknown before the body is trusted) and "
       "result: accepted, duplicate, bad_signature, unauthorized, too_large, malformed, "
       "ignored (no status news, or another shard's owner without webhooks.peers), "
       "forwarded (sent to the owner's shard, which answered and counts it again).", "agent"),
    _m("web_requests_refused", "counter", ("reason",),
       "Requests to the metrics listener refused by the web config file before any route: "
       "missing or invalid basic-auth credentials (malformed ones included), rate_limited "
       "(its rate_limit, or too many password checks queued for one client).", "agent"),
    _m("listener_refusals", "counter", ("listener", "reason"),
       "Connections a listener (metrics, webhooks, fix) closed before any route ran: "
       "max_connections (503 beyond its max_connections), header_timeout (no complete header "
       "block within read_header_timeout: 408, or a plain close when nothing came), "
       "header_too_large (431 beyond 64 KB of headers).", "agent"),
    _m("fix_clicks", "counter", ("result",),
       "Clicks on /fix/<token> links by answer: redirected (302), invalid (malformed or "
       "forged token, 400), expired and nothing_to_fix (410), rate_limited (429: per genuine "
       "token and overall, invalid tokens on a budget of their own), unavailable (502: no "
       "fresh link from the aggregator), stopping (503 while the agent stops).", "agent"),
    _m("push_refresh_duration_seconds", "histogram", ("source",),
       "From a webhook event's arrival to its owner's re-read applied to /metrics.", "agent",
       buckets=PUSH_REFRESH_BUCKETS),
    _m("webhook_forward_duration_seconds", "histogram", ("source",),
       "Time a delivery forwarded to its owner's shard (webhooks.peers) waited for that pod's "
       "answer.", "agent", buckets=FORWARD_BUCKETS),
    _m("webhook_forward_failures", "counter", ("source", "reason"),
       "Deliveries for another shard's owner (webhooks.peers) that could not be forwarded, so "
       "the sender got 503 + Retry-After and will retry: unreachable (refused, reset or timed "
       "out), unavailable (the owner's pod answered 404 while starting, or 5xx).", "agent"),
    _m("fix_links", "counter", ("source", "result"),
       "Repair links requested from the aggregator.", "agent"),
    _m("fix_requests", "counter", ("source", "provider", "kind", "result"),
       "Repair-loop requests (kind fix, otp_each_refresh or consent_renewal) by result: "
       "delivered; retried "
       "(an attempt failed, another is scheduled); failed (the receiver answered 410); held "
       "(by the storm guard, until released); dead (undelivered after remediation.retry_for).",
       "agent"),
    _m("fix_requests_pending", "gauge", ("source",),
       "Fix requests waiting for delivery, retries included.", "agent"),
    _m("fix_requests_held", "gauge", ("source", "institution_id", "institution"),
       "Fix requests held by the storm guard until an operator releases them "
       "(openfinance-exporter remediation release).", "agent"),
    _m("fix_outcomes", "counter", ("source", "provider", "outcome"),
       "Ends of episodes whose fix request was delivered: fixed (back at ok), abandoned (still "
       "broken after retry_for + abandon_after); rebroke: a fixed login broken again within "
       "7 days; renewed: a consent period whose consent_renewal request was delivered ended "
       "with a later consent end.", "agent"),
    _m("fix_resolution_seconds", "histogram", ("source", "provider", "category"),
       "Time from a fix request's delivery to its login being back at ok, by the category "
       "the request was made for.", "agent", buckets=FIX_RESOLUTION_BUCKETS),
    _m("fix_events_ignored", "counter", ("source", "reason"),
       "Account events of fixable accounts that could not open a repair episode (reason: "
       "no_owner_id, no_login_id: the payload lacked the customer/user or login id).", "agent"),
    _m("state_accounts", "gauge", ("source",),
       "Accounts held in the state database.", "agent", from_snapshot=True),
    _m("build_info", "gauge", ("version",), "Build information; value 1.", "agent"),
    _m("push_refresh_failures", "counter", ("source", "result"),
       "Webhook events whose owner re-read failed, by result: retried (another attempt is "
       "scheduled) or given_up (still failing after webhooks.give_up_after: acknowledged but "
       "not applied; the next poll sees the owner).", "agent"),
    _m("fix_institution_outcomes", "counter", (*FLEET_LABELS, "code", "outcome"),
       "The repair funnel per institution and fixable code: requested (a fix request was "
       "created, held ones included), fixed and abandoned (episodes whose request was "
       "delivered, as in openfinance_fix_outcomes_total). code: the request's code for "
       "requested, the login's latest fixable code for the outcomes. Institutions the fleet "
       "metrics fold (tracker.institution_min_accounts) count as institution_id=\"other\".",
       "agent"),
    _m("routing_changes", "counter", ("provider", "direction"),
       "Changes of routing advice per institution: direction=away (an aggregator's share fell "
       "below its default share), back (it rose from below it).", "agent"),
)

BY_NAME = {m.name: m for m in METRICS}


def spec(short: str) -> MetricSpec:
    """The spec of ``openfinance_<short>``."""
    return BY_NAME[PREFIX + short]


def series_labels() -> dict[str, frozenset[str]]:
    """Every stored series name → the labels it may carry (``le`` on buckets)."""
    out: dict[str, frozenset[str]] = {}
    for m in METRICS:
        for s in m.series_names:
            extra = {"le"} if s.endswith("_bucket") else set()
            out[s] = frozenset(m.labels) | extra
    return out


def render_markdown() -> str:
    """The body of ``docs/metrics.md`` (regenerate with ``python -m exporter.metrics``)."""
    lines = [
        "# Metrics reference",
        "",
        "Generated from `exporter/metrics/catalog.py` by `python -m exporter.metrics > "
        "docs/metrics.md`; a test fails when this file and the code disagree.",
        "",
        "Fleet metrics are recomputed when a sweep lands and keep their last value while a "
        "sweep fails. No label ever carries a customer, account, login or member id.",
        "",
    ]
    for group, title in (("fleet", "Fleet state"), ("agent", "The agent itself")):
        lines += [f"## {title}", "", "| metric | type | labels | meaning |", "|---|---|---|---|"]
        for m in METRICS:
            if m.group == group:
                name = m.name + ("_total" if m.type == "counter" else "")
                labels = ", ".join(f"`{label}`" for label in m.labels) or "—"
                lines.append(f"| `{name}` | {m.type} | {labels} | {m.help} |")
        lines.append("")
    lines += [
        "Age buckets (`le`, seconds) of the gauge histograms: "
        + ", ".join(f"{b:g}" for b in AGE_BUCKETS) + ", +Inf.",
        "",
        "Label values: `code` is the Finicity code as a string (`\"185\"`, `\"NONE\"` before "
        "the first aggregation) or the MX `connection_status` (`\"CHALLENGED\"`, `\"NONE\"` "
        "for a null status); `category` is one of ok, credentials, user_action, mfa, oauth, "
        "institution, unsupported, account_closed, pending, disabled, manual, unknown "
        "(see `openfinance-exporter codes`).",
        "",
        "## Adding a metric",
        "",
        "Declare it once, as a `MetricSpec` in `METRICS` (`exporter/metrics/catalog.py`). A "
        "metric computed from the tracker's snapshot is marked `from_snapshot=True` and "
        "yielded by a collector in `exporter/metrics/collectors.py`; any other becomes a "
        "`prometheus_client` instrument of `AgentMetrics` (`exporter/metrics/observers.py`) "
        "by itself, set by a method of the observer Protocol through which the feature "
        "reports (as `UpstreamObserver`, `SweepObserver`). Then regenerate this file; the "
        "dashboards' and rules' contract tests accept the metric from then on.",
        "",
    ]
    return "\n".join(lines)
