"""The repair loop's metrics: AgentMetrics as the RemediationObserver."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from exporter.metrics.observers import AgentMetrics


def _metrics():
    registry = CollectorRegistry()
    return registry, AgentMetrics(registry)


def test_an_enabled_source_starts_with_its_series_at_zero():
    registry, m = _metrics()
    m.remediation_source("fin", "finicity")
    labels = {"source": "fin", "provider": "finicity", "kind": "fix", "result": "dead"}
    assert registry.get_sample_value("openfinance_fix_requests_total", labels) == 0
    assert registry.get_sample_value(
        "openfinance_fix_outcomes_total",
        {"source": "fin", "provider": "finicity", "outcome": "fixed"}) == 0
    assert registry.get_sample_value("openfinance_fix_requests_pending", {"source": "fin"}) == 0


def test_requests_outcomes_and_resolution_are_counted():
    registry, m = _metrics()
    m.fix_request("fin", "finicity", "fix", "delivered")
    m.fix_outcome("fin", "finicity", "fixed")
    m.fix_resolution("fin", "finicity", "credentials", 7200)
    m.fix_event_ignored("fin", "no_login_id")
    assert registry.get_sample_value("openfinance_fix_requests_total", {
        "source": "fin", "provider": "finicity", "kind": "fix", "result": "delivered"}) == 1
    assert registry.get_sample_value("openfinance_fix_resolution_seconds_bucket", {
        "source": "fin", "provider": "finicity", "category": "credentials", "le": "21600.0"}) == 1
    assert registry.get_sample_value("openfinance_fix_events_ignored_total",
                                     {"source": "fin", "reason": "no_login_id"}) == 1


def test_pending_is_set_whole_and_a_source_without_pending_reads_zero():
    registry, m = _metrics()
    m.fix_pending({"fin": 3, "mx": 1})
    m.fix_pending({"fin": 2})
    assert registry.get_sample_value("openfinance_fix_requests_pending", {"source": "fin"}) == 2
    assert registry.get_sample_value("openfinance_fix_requests_pending", {"source": "mx"}) == 0


def test_held_series_go_away_when_released():
    registry, m = _metrics()
    m.fix_held({("fin", "101", "FinBank"): 4, ("fin", "102", "Other"): 1})
    m.fix_held({("fin", "102", "Other"): 2})
    held = "openfinance_fix_requests_held"
    assert registry.get_sample_value(
        held, {"source": "fin", "institution_id": "101", "institution": "FinBank"}) is None
    assert registry.get_sample_value(
        held, {"source": "fin", "institution_id": "102", "institution": "Other"}) == 2
