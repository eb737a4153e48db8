"""The Prometheus side of the agent.

- :mod:`~exporter.metrics.catalog`: every metric (name, type, labels, help, buckets); the
  one place a new metric is declared, and the source of ``docs/metrics.md``.
- :mod:`~exporter.metrics.collectors`: fleet state, state size and ages, read from the
  tracker's snapshot.
- :mod:`~exporter.metrics.observers`: the self-metrics, set through the upstream, tracker and
  sweep observer interfaces.
- :mod:`~exporter.metrics.exposition`: the cached /metrics rendering.

:func:`build_metrics` wires them together; the agent, the tests and the benchmarks all use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, disable_created_metrics

from exporter.catalog import Catalog
from exporter.metrics.collectors import (
    AgeCollector,
    ConsentCollector,
    FleetCollector,
    InstitutionHealthCollector,
    Rows,
)
from exporter.metrics.exposition import OPENMETRICS, TEXT, Exposition
from exporter.metrics.observers import AgentMetrics
from exporter.tracker import Snapshot

__all__ = ["OPENMETRICS", "TEXT", "AgeCollector", "AgentMetrics", "Exposition",
           "FleetCollector", "Metrics", "build_metrics"]


@dataclass(frozen=True, slots=True)
class Metrics:
    """Registries, self-metrics and exposition of one agent."""

    fleet: CollectorRegistry  # rendered once per snapshot
    live: CollectorRegistry  # rendered on every scrape
    agent: AgentMetrics  # the observer the sources, tracker and sweep runner report to
    exposition: Exposition

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's current value from either registry (tests, tools)."""
        for registry in (self.fleet, self.live):
            v = registry.get_sample_value(name, labels or {})
            if v is not None:
                return v
        return None


def build_metrics(snapshot: Callable[[], Snapshot], *, clock: Callable[[], float],
                  catalog: Catalog | None = None,
                  institution_rows: Rows = lambda: ((), (), ())) -> Metrics:
    """Registry, collectors, self-metrics and exposition over a tracker's ``snapshot``.

    ``snapshot`` is called at scrape time (the tracker may be built after this, with
    ``events=metrics.agent``). ``institution_rows`` gives the institution-health rows
    (``exporter.health.wiring.HealthWiring.rows``), read at scrape time too.
    """
    # ``*_created`` series double the exposition and nothing here queries them.
    disable_created_metrics()
    fleet = CollectorRegistry(auto_describe=True)
    live = CollectorRegistry(auto_describe=True)
    agent = AgentMetrics(live)
    fleet.register(FleetCollector(snapshot, catalog or Catalog.default()))
    live.register(AgeCollector(snapshot, clock))
    live.register(ConsentCollector(snapshot, clock))
    live.register(InstitutionHealthCollector(institution_rows))
    exposition = Exposition(fleet, live, lambda: snapshot().version)
    return Metrics(fleet, live, agent, exposition)
