"""The agent's own metrics, set only through the observer interfaces of their producers.

:class:`AgentMetrics` implements :class:`exporter.sources.base.UpstreamObserver` (requests,
retries, auth failures, invalid records), :class:`exporter.tracker.TrackerEvents` (unknown
codes), :class:`exporter.agent.sweeps.SweepObserver` (sweep results, durations, progress) and
:class:`exporter.webhooks.observer.WebhookObserver` (webhook deliveries, push re-reads). The
producers know nothing of Prometheus; nothing else sets these instruments.

Every catalogued metric that is not read from the snapshot gets its instrument here, built
from its :class:`~exporter.metrics.catalog.MetricSpec`; a feature that adds a metric to the
catalogue adds the observer method that sets it (see :mod:`exporter.metrics.catalog`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from exporter import __version__
from exporter.metrics.catalog import METRICS, MetricSpec, spec
from exporter.sources.drift import DRIFT_KINDS
from exporter.webhooks.observer import FORWARD_FAILURES, REFRESH_FAILURES

_INSTRUMENTS = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}

RETRY_REASONS = ("rate_limited", "server_error", "timeout", "connect_error", "token_expired")
SWEEP_RESULTS = ("success", "partial", "failed")
STATE_WRITE_REASONS = ("disk_full", "read_only", "locked", "corrupt", "io_error")
FIX_KINDS = ("fix", "otp_each_refresh")
FIX_RESULTS = ("delivered", "retried", "failed", "held", "dead")
FIX_OUTCOMES = ("fixed", "rebroke", "abandoned")
FIX_INSTITUTION_OUTCOMES = ("requested", "fixed", "abandoned")
ROUTING_DIRECTIONS = ("away", "back")


def _instrument(s: MetricSpec, registry: CollectorRegistry) -> MetricWrapperBase:
    kwargs = {"buckets": s.buckets} if s.buckets else {}
    return _INSTRUMENTS[s.type](s.name, s.help, labelnames=s.labels, registry=registry, **kwargs)


class AgentMetrics:
    """Self-metrics: one instrument per catalogued non-snapshot metric, set by observer calls."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._instruments = {s.short: _instrument(s, registry)
                             for s in METRICS if not s.from_snapshot}
        self._held: set[tuple[str, str, str]] = set()
        self._pending_sources: set[str] = set()
        self._funnel: set[tuple[str, str, str, str, str]] = set()
        self.instrument("build_info").labels(__version__).set(1)

    def instrument(self, short: str) -> MetricWrapperBase:
        """The instrument of ``openfinance_<short>`` (a KeyError names a missing spec)."""
        return self._instruments[spec(short).short]

    def _inc(self, short: str, *labels: str) -> None:
        self._instruments[short].labels(*labels).inc()

    def _set(self, short: str, value: float, *labels: str) -> None:
        self._instruments[short].labels(*labels).set(value)

    # SweepObserver
    def source_added(self, source: str, provider: str) -> None:
        """Create a source's series at zero so rate() and absent() work from the start."""
        for result in SWEEP_RESULTS:
            self._instruments["sweeps"].labels(source, result)
        self._instruments["upstream_auth_failures"].labels(source)
        self._set("source_up", 1, source)
        self._set("sweep_progress_ratio", 1, source)
        self._instruments["unknown_codes"].labels(source, provider)
        for reason in RETRY_REASONS:
            self._instruments["upstream_retries"].labels(source, reason)
        for reason in STATE_WRITE_REASONS:
            self._instruments["state_write_failures"].labels(source, reason)

    def sweep_started(self, source: str) -> None:
        self._set("sweep_progress_ratio", 0, source)

    def sweep_progress(self, source: str, ratio: float) -> None:
        self._set("sweep_progress_ratio", min(ratio, 1.0), source)

    def sweep_cancelled(self, source: str, duration: float) -> None:
        self._instruments["sweep_duration_seconds"].labels(source).observe(duration)
        self._set("sweep_progress_ratio", 1, source)

    def sweep_finished(self, source: str, result: str, duration: float, *,
                       records: int | None = None, completed_at: float | None = None) -> None:
        """``records``: accounts seen (finished sweeps); ``completed_at``: complete sweeps."""
        self._instruments["sweep_duration_seconds"].labels(source).observe(duration)
        if records is not None:
            self._set("sweep_accounts", records, source)
        if completed_at is not None:
            self._set("sweep_last_success_timestamp_seconds", completed_at, source)
        self._inc("sweeps", source, result)
        self._set("sweep_progress_ratio", 1, source)

    def source_stopped(self, source: str) -> None:
        self._set("source_up", 0, source)

    def state_write_failed(self, source: str, reason: str) -> None:
        self._inc("state_write_failures", source, reason)

    def state_recovered(self) -> None:
        self._instruments["state_recovered"].inc()

    # UpstreamObserver
    def request(self, source: str, endpoint: str, status_code: str, duration: float) -> None:
        self._inc("upstream_requests", source, endpoint, status_code)
        self._instruments["upstream_request_duration_seconds"].labels(source, endpoint).observe(
            duration)

    def retry(self, source: str, reason: str) -> None:
        self._inc("upstream_retries", source, reason)

    def auth_failure(self, source: str) -> None:
        self._inc("upstream_auth_failures", source)
        self.source_stopped(source)

    # UpstreamObserver and TrackerEvents
    def invalid_record(self, source: str, reason: str) -> None:
        self._inc("invalid_records", source, reason)

    def unknown_code(self, source: str, provider: str) -> None:
        self._inc("unknown_codes", source, provider)
        self._inc("upstream_drift", source, provider, "unknown_status")

    def upstream_drift(self, source: str, provider: str, kind: str) -> None:
        self._inc("upstream_drift", source, provider, kind)

    def upstream_api(self, source: str, provider: str, version: str) -> None:
        """The version a source speaks, with its drift series at zero so that increase()
        and the alert work from the first occurrence."""
        self._set("upstream_api_info", 1, source, provider, version)
        for kind in DRIFT_KINDS:
            self._instruments["upstream_drift"].labels(source, provider, kind)

    # WebhookObserver (exporter.webhooks.observer)
    def webhooks_enabled(self, source: str) -> None:
        """Create a source's rejection series at zero so rate() and alerts work from the start."""
        for result in ("bad_signature", "unauthorized", "accepted"):
            self._instruments["webhook_events"].labels(source, "unknown", result)
        for result in REFRESH_FAILURES:
            self._instruments["push_refresh_failures"].labels(source, result)
        for reason in FORWARD_FAILURES:
            self._instruments["webhook_forward_failures"].labels(source, reason)

    def webhook_event(self, source: str, kind: str, result: str) -> None:
        self._inc("webhook_events", source, kind, result)

    def push_refresh(self, source: str, seconds: float) -> None:
        self._instruments["push_refresh_duration_seconds"].labels(source).observe(seconds)

    def push_refresh_failed(self, source: str, result: str, events: int) -> None:
        self._instruments["push_refresh_failures"].labels(source, result).inc(events)

    def webhook_forwarded(self, source: str, seconds: float) -> None:
        self._instruments["webhook_forward_duration_seconds"].labels(source).observe(seconds)

    def webhook_forward_failed(self, source: str, reason: str) -> None:
        self._inc("webhook_forward_failures", source, reason)

    # RemediationObserver (exporter.remediation.observer)
    def remediation_source(self, source: str, provider: str) -> None:
        """Create a source's repair-loop series at zero (remediation enabled)."""
        for kind in FIX_KINDS:
            for result in FIX_RESULTS:
                self._instruments["fix_requests"].labels(source, provider, kind, result)
        for outcome in FIX_OUTCOMES:
            self._instruments["fix_outcomes"].labels(source, provider, outcome)
        self._set("fix_requests_pending", 0, source)
        self._pending_sources.add(source)

    def fix_request(self, source: str, provider: str, kind: str, result: str) -> None:
        self._inc("fix_requests", source, provider, kind, result)

    def fix_outcome(self, source: str, provider: str, outcome: str) -> None:
        self._inc("fix_outcomes", source, provider, outcome)

    def fix_resolution(self, source: str, provider: str, category: str, seconds: float) -> None:
        self._instruments["fix_resolution_seconds"].labels(source, provider, category).observe(
            seconds)

    def fix_pending(self, counts: Mapping[str, int]) -> None:
        gauge = self._instruments["fix_requests_pending"]
        self._pending_sources |= set(counts)
        for source in self._pending_sources:
            gauge.labels(source).set(counts.get(source, 0))

    def fix_held(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        gauge = self._instruments["fix_requests_held"]
        for key in self._held - set(counts):
            gauge.remove(*key)
        for key, n in counts.items():
            gauge.labels(*key).set(n)
        self._held = set(counts)

    def fix_event_ignored(self, source: str, reason: str) -> None:
        self._inc("fix_events_ignored", source, reason)

    def fix_click(self, result: str) -> None:
        self._inc("fix_clicks", result)

    # WebObserver (exporter.web.toolkit)
    def web_auth_refused(self, reason: str) -> None:
        self._inc("web_requests_refused", reason)

    def listener(self, name: str, reasons: Iterable[str]) -> Callable[[str], None]:
        """What a listener called ``name`` reports its refusals to, one of ``reasons``
        (:data:`exporter.web.limits.REFUSALS`); the series created at zero, so ``rate()``
        and alerts work before the first."""
        counter = self._instruments["listener_refusals"]
        children = {reason: counter.labels(name, reason) for reason in reasons}
        return lambda reason: children[reason].inc()

    def web_config_reload(self, result: str) -> None:
        """Logged by exporter.web.toolkit (a failure at error level); not a metric."""

    def fix_institution(self, source: str, provider: str, institution_id: str,
                        institution: str, code: str, outcome: str | None) -> None:
        """Count one step of an institution's repair funnel; ``None`` only creates its
        series at zero (an episode opened), so increase() sees the first request."""
        counter = self._instruments["fix_institution_outcomes"]
        labels = (source, provider, institution_id, institution, code)
        if labels not in self._funnel:
            for each in FIX_INSTITUTION_OUTCOMES:
                counter.labels(*labels, each)
            self._funnel.add(labels)
        if outcome is not None:
            counter.labels(*labels, outcome).inc()

    # RoutingObserver (exporter.routing.advisor)
    def routing_providers(self, providers: tuple[str, ...]) -> None:
        for provider in providers:
            for direction in ROUTING_DIRECTIONS:
                self._instruments["routing_changes"].labels(provider, direction)

    def routing_changed(self, provider: str, direction: str) -> None:
        self._inc("routing_changes", provider, direction)
