"""Prometheus side of the agent: collectors over the tracker's snapshot, and self-metrics.

Fleet series change only when a sweep lands, so :class:`Exposition` renders them once per
snapshot (text and OpenMetrics, plain and gzip) and serves those bytes; only the small live
part (self-metrics and the age histograms, whose ages grow with the clock) is rendered on
each scrape. Nothing here does I/O.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.catalog import Catalog
from exporter.metric_catalog import (
    AGE_BUCKETS,
    BY_NAME,
    PREFIX,
    REQUEST_DURATION_BUCKETS,
    SWEEP_DURATION_BUCKETS,
    MetricSpec,
)
from exporter.tracker import AgeHistogram, Snapshot

OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST
# 0.0.4: what Prometheus 2.x and every scraper understands.
TEXT = text_format.CONTENT_TYPE_PLAIN_0_0_4
_EOF = b"# EOF\n"


def _spec(short: str) -> MetricSpec:
    return BY_NAME[PREFIX + short]


def _gauge(short: str) -> GaugeMetricFamily:
    spec = _spec(short)
    return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)


def _counter(short: str) -> CounterMetricFamily:
    spec = _spec(short)
    return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)


class FleetCollector(Collector):
    """Fleet state from the current snapshot; reads memory only.

    ``openfinance_accounts{source="finicity-prod",provider="finicity",institution_id="4222",
    institution="FinBank",code="185",category="mfa"} 12.0``
    """

    def __init__(self, snapshot: Callable[[], Snapshot], catalog: Catalog):
        self._snapshot = snapshot
        self._catalog = catalog

    def describe(self) -> Iterator[Metric]:
        yield from (_gauge("accounts"), _gauge("fixable_accounts"),
                    _gauge("otp_suspected_accounts"), _counter("status_transitions"),
                    _gauge("status_code_info"))

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        accounts, fixable, otp = (_gauge("accounts"), _gauge("fixable_accounts"),
                                  _gauge("otp_suspected_accounts"))
        transitions = _counter("status_transitions")
        for agg in snap.sources.values():
            base = (agg.source, agg.provider)
            for inst_id, inst, code, category, n in agg.accounts:
                accounts.add_metric((*base, inst_id, inst, code, category), n)
            for inst_id, inst, code, n in agg.fixable:
                fixable.add_metric((*base, inst_id, inst, code), n)
            for inst_id, inst, n in agg.otp_suspected:
                otp.add_metric((*base, inst_id, inst), n)
            for inst_id, inst, frm, to, n in agg.transitions:
                transitions.add_metric((*base, inst_id, inst, frm, to), n)
        info = _gauge("status_code_info")
        for e in self._catalog:
            info.add_metric((e.provider, e.code, e.name, e.category, str(e.fixable).lower()), 1)
        yield from (accounts, fixable, otp, transitions, info)


class AgeCollector(Collector):
    """Gauge histograms of broken-account age and last-success age, as of now.

    ``openfinance_broken_account_age_seconds_bucket{source="mx-prod",provider="mx",
    category="institution",le="86400.0"} 31.0``
    """

    def __init__(self, snapshot: Callable[[], Snapshot], clock: Callable[[], float]):
        self._snapshot = snapshot
        self._clock = clock

    def describe(self) -> Iterator[Metric]:
        for short in ("broken_account_age_seconds", "account_last_success_age_seconds"):
            spec = _spec(short)
            yield GaugeHistogramMetricFamily(spec.name, spec.help, labels=spec.labels)

    @staticmethod
    def _buckets(ages: AgeHistogram, now: float, extra_inf: int = 0):
        """Cumulative counts of ages ≤ each bound, and the sum of ages."""
        out = [(floatToGoString(b), ages.since(now - b)) for b in AGE_BUCKETS]
        out.append(("+Inf", ages.total + extra_inf))
        return out, ages.total * now - ages.time_sum

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        broken_spec = _spec("broken_account_age_seconds")
        success_spec = _spec("account_last_success_age_seconds")
        broken = GaugeHistogramMetricFamily(broken_spec.name, broken_spec.help,
                                            labels=broken_spec.labels)
        success = GaugeHistogramMetricFamily(success_spec.name, success_spec.help,
                                             labels=success_spec.labels)
        for agg in self._snapshot().sources.values():
            for category, ages in sorted(agg.broken_since.items()):
                buckets, s = self._buckets(ages, now)
                broken.add_metric([agg.source, agg.provider, category], buckets, s)
            buckets, s = self._buckets(agg.success, now, agg.never_succeeded)
            success.add_metric([agg.source, agg.provider], buckets, s)
        yield broken
        yield success


class AgentMetrics:
    """The agent's own metrics; implements the sources' observer and the tracker's events."""

    def __init__(self, registry: CollectorRegistry):
        # ``*_created`` series double the exposition and nothing here queries them.
        disable_created_metrics()

        def make(cls, short, **kw):
            spec = _spec(short)
            return cls(spec.name, spec.help, labelnames=spec.labels, registry=registry, **kw)

        self.sweeps = make(Counter, "sweeps")
        self.sweep_duration = make(Histogram, "sweep_duration_seconds",
                                   buckets=SWEEP_DURATION_BUCKETS)
        self.sweep_last_success = make(Gauge, "sweep_last_success_timestamp_seconds")
        self.sweep_accounts = make(Gauge, "sweep_accounts")
        self.sweep_progress = make(Gauge, "sweep_progress_ratio")
        self.requests = make(Counter, "upstream_requests")
        self.request_duration = make(Histogram, "upstream_request_duration_seconds",
                                     buckets=REQUEST_DURATION_BUCKETS)
        self.retries = make(Counter, "upstream_retries")
        self.auth_failures = make(Counter, "upstream_auth_failures")
        self.source_up = make(Gauge, "source_up")
        self.invalid_records = make(Counter, "invalid_records")
        self.unknown_codes = make(Counter, "unknown_codes")
        self.webhook_events = make(Counter, "webhook_events")
        self.fix_links = make(Counter, "fix_links")
        self.state_accounts = make(Gauge, "state_accounts")
        self.build_info = make(Gauge, "build_info")
        self.build_info.labels(__version__).set(1)

    def init_source(self, source: str, provider: str) -> None:
        """Create a source's series at zero so rate() and absent() work from the start."""
        for result in ("success", "partial", "failed"):
            self.sweeps.labels(source, result)
        self.auth_failures.labels(source)
        self.source_up.labels(source).set(1)
        self.sweep_progress.labels(source).set(1)
        self.unknown_codes.labels(source, provider)
        for reason in ("rate_limited", "server_error", "timeout", "connect_error",
                       "token_expired"):
            self.retries.labels(source, reason)
        self.fix_links.labels(source, "disabled")

    # UpstreamObserver
    def request(self, source: str, endpoint: str, status_code: str, duration: float) -> None:
        self.requests.labels(source, endpoint, status_code).inc()
        self.request_duration.labels(source, endpoint).observe(duration)

    def retry(self, source: str, reason: str) -> None:
        self.retries.labels(source, reason).inc()

    def auth_failure(self, source: str) -> None:
        self.auth_failures.labels(source).inc()
        self.source_up.labels(source).set(0)

    # UpstreamObserver and TrackerEvents
    def invalid_record(self, source: str, reason: str) -> None:
        self.invalid_records.labels(source, reason).inc()

    def unknown_code(self, source: str, provider: str) -> None:
        self.unknown_codes.labels(source, provider).inc()


class Exposition:
    """Serves /metrics: cached fleet bytes per snapshot plus a freshly rendered live part."""

    def __init__(self, fleet: CollectorRegistry, live: CollectorRegistry,
                 version: Callable[[], int]):
        self._fleet = fleet
        self._live = live
        self._version = version
        self._lock = threading.Lock()
        self._cache: tuple[int, dict] | None = None

    def _fleet_bytes(self, openmetrics_format: bool) -> bytes:
        """The fleet part for one format, rendered at most once per snapshot version."""
        parts = self._parts()
        with self._lock:
            if openmetrics_format not in parts:
                if openmetrics_format:
                    plain = openmetrics.generate_latest(self._fleet)
                    plain = plain[: -len(_EOF)] if plain.endswith(_EOF) else plain
                else:
                    plain = text_format.generate_latest(self._fleet)
                parts[openmetrics_format] = plain
            return parts[openmetrics_format]

    def _fleet_gzip(self, openmetrics_format: bool):
        """A gzip compressor that has consumed the fleet part, and the bytes it produced.

        Each scrape copies the compressor and feeds it the live part, so the response is one
        gzip stream (not concatenated members, which some clients read only the first of)
        while the large fleet part is compressed once per snapshot.
        """
        parts = self._parts()
        key = ("gzip", openmetrics_format)
        plain = self._fleet_bytes(openmetrics_format)
        with self._lock:
            if key not in parts:
                comp = zlib.compressobj(6, zlib.DEFLATED, 31)
                head = comp.compress(plain) + comp.flush(zlib.Z_SYNC_FLUSH)
                parts[key] = (comp, head)
            return parts[key]

    def _parts(self) -> dict:
        version = self._version()
        with self._lock:
            if self._cache is None or self._cache[0] != version:
                self._cache = (version, {})
            return self._cache[1]

    def prerender(self) -> None:
        """Render what Prometheus will ask for (OpenMetrics, gzip) before the next scrape."""
        self._fleet_gzip(True)
        self._fleet_bytes(False)

    def render(self, accept: str = "", accept_encoding: str = "") -> tuple[bytes, str, bool]:
        """(body, content type, gzipped) for a scrape with these request headers."""
        use_om = "application/openmetrics-text" in accept
        if use_om:
            live = openmetrics.generate_latest(self._live)
            content_type = OPENMETRICS
        else:
            live = text_format.generate_latest(self._live)
            content_type = TEXT
        if "gzip" in accept_encoding:
            comp, head = self._fleet_gzip(use_om)
            with self._lock:
                comp = comp.copy()
            return head + comp.compress(live) + comp.flush(), content_type, True
        return self._fleet_bytes(use_om) + live, content_type, False
