"""The Prometheus side of the agent.

- :mod:`~exporter.metrics.catalog`: every metric (name, type, labels, help, buckets); the
  one place a new metric is declared, and the source of ``docs/metrics.md``.
- :mod:`~exporter.metrics.collectors`: fleet state, state size and ages, read from the
  tracker's snapshot.
- :mod:`~exporter.metrics.observers`: the self-metrics, set through the upstream, tracker and
  sweep observer interfaces.
- :mod:`~exporter.metrics.snapshot_text`: the snapshot part of /metrics (fleet series and
  institution health) kept per institution block, re-rendered where a snapshot changed it.
- :mod:`~exporter.metrics.exposition`: the cached /metrics rendering (text, OpenMetrics, gzip).

:func:`build_metrics` wires them together; the agent, the tests and the benchmarks all use it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, disable_created_metrics

from exporter.health.wiring import HealthWiring
from exporter.metrics.collectors import (
    AgeCollector,
    ConsentCollector,
    FleetCollector,
    InstitutionHealthCollector,
    RoutingCollector,
)
from exporter.metrics.exposition import OPENMETRICS, TEXT, Exposition
from exporter.metrics.observers import AgentMetrics
from exporter.metrics.snapshot_text import SnapshotText
from exporter.routing.advisor import Advisor
from exporter.status_codes import Catalog
from exporter.tracker import Snapshot

__all__ = ["OPENMETRICS", "TEXT", "AgeCollector", "AgentMetrics", "Exposition",
           "FleetCollector", "Metrics", "agent_metrics", "build_metrics"]


@dataclass(frozen=True, slots=True)
class Metrics:
    """Registries, self-metrics and exposition of one agent."""

    fleet: CollectorRegistry  # the snapshot part (served per institution block, see exposition)
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


def agent_metrics() -> AgentMetrics:
    """The self-metrics on a registry of their own, rendered on every scrape: built first,
    since every part of the agent reports to them; :func:`build_metrics` adds the rest."""
    # ``*_created`` series double the exposition and nothing here queries them.
    disable_created_metrics()
    return AgentMetrics(CollectorRegistry(auto_describe=True))


def build_metrics(snapshot: Callable[[], Snapshot], *, clock: Callable[[], float],
                  catalog: Catalog | None = None,
                  institutions: Callable[[], HealthWiring | None] = lambda: None,
                  routing: Callable[[], Advisor | None] = lambda: None,
                  agent: AgentMetrics | None = None) -> Metrics:
    """Registry, collectors, self-metrics and exposition over a tracker's ``snapshot``.

    ``snapshot`` is called at scrape time. ``institutions`` gives institution health
    (``exporter.health.wiring.HealthWiring``), read at scrape time too, as is ``routing``
    (``exporter.routing.advisor.Advisor``: its rows are kept per institution key with the
    snapshot part and re-rendered when its version moves). ``agent``: the self-metrics,
    when built before (:func:`agent_metrics`); a new set otherwise.
    """
    agent = agent or agent_metrics()
    catalog = catalog or Catalog.default()
    fleet = CollectorRegistry(auto_describe=True)
    live = agent.registry
    # Institution health first: it changes less often than the fleet series, and the gzip
    # side reuses the stream's CRC up to the first piece that changed.
    fleet.register(InstitutionHealthCollector(lambda: _rows(institutions())))
    fleet.register(FleetCollector(snapshot, catalog))
    live.register(AgeCollector(snapshot, clock))
    live.register(ConsentCollector(snapshot, clock))
    fleet.register(RoutingCollector(lambda: _routing_rows(routing())))
    exposition = Exposition(SnapshotText(snapshot, catalog, institutions, routing), live)
    return Metrics(fleet, live, agent, exposition)


def _routing_rows(routing: Advisor | None) -> Iterable[tuple[str, str, str, int]]:
    return () if routing is None else [r for rows in routing.rows_by_key().values() for r in rows]


def _rows(institutions: HealthWiring | None):
    return ((), (), ()) if institutions is None else institutions.rows()
