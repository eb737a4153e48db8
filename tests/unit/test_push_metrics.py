"""Push metrics for the alerts: a webhook source's series exist at zero from the start, and
failed owner re-reads are counted as retried, then given up."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from exporter.metrics.observers import AgentMetrics
from exporter.sources.notices import Delivery
from exporter.upstreams.finicity.webhooks import FINICITY_KEEP
from exporter.webhooks.processor import PushProcessor
from tests.unit.test_webhooks_support import Clock, FakeSource, FakeTracker, RecordingObserver

SRC = "finicity-prod"


def test_a_webhook_source_starts_with_accepted_rejected_and_failure_series_at_zero():
    registry = CollectorRegistry()
    AgentMetrics(registry).webhooks_enabled(SRC)
    for result in ("accepted", "bad_signature", "unauthorized"):
        assert registry.get_sample_value("openfinance_webhook_events_total", {
            "source": SRC, "kind": "unknown", "result": result}) == 0
    for result in ("retried", "given_up"):
        assert registry.get_sample_value("openfinance_push_refresh_failures_total", {
            "source": SRC, "result": result}) == 0


def test_failed_rereads_count_their_events():
    registry = CollectorRegistry()
    m = AgentMetrics(registry)
    m.push_refresh_failed(SRC, "retried", 3)
    m.push_refresh_failed(SRC, "given_up", 2)
    assert registry.get_sample_value("openfinance_push_refresh_failures_total", {
        "source": SRC, "result": "retried"}) == 3
    assert registry.get_sample_value("openfinance_push_refresh_failures_total", {
        "source": SRC, "result": "given_up"}) == 2


async def test_a_reread_that_keeps_failing_is_counted_retried_then_given_up(inbox):
    clock = Clock()
    for key in ("a", "b"):
        await inbox.put(SRC, Delivery("unableToConnect", ("1001",), f"e:{key}", FINICITY_KEEP),
                        clock())
    source = FakeSource()
    source.fail_next = 100
    observer = RecordingObserver()
    p = PushProcessor(inbox, {SRC: source}, FakeTracker(), observer, clock=clock,
                      backoff=60.0, backoff_max=60.0, give_up_after=600.0)
    await p.load()
    for _ in range(20):
        await p.drain()
        clock.advance(60.0)
    retries = len(source.calls) - 1
    assert retries >= 1
    # Both events of the owner ride every attempt: counted per event, not per re-read.
    assert observer.failures == {(SRC, "retried"): 2 * retries, (SRC, "given_up"): 2}
    assert observer.refreshes == []
