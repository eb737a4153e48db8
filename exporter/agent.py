"""Assembles the agent from a configuration: store, tracker, metrics, sources, scheduler, server.

There is no module-level state: everything is built here and passed down, so tests and the
``demo`` command can build as many agents as they like.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from exporter import __version__
from exporter.catalog import Catalog
from exporter.config import Settings
from exporter.metrics import build_metrics
from exporter.metrics.observers import AgentMetrics
from exporter.remediation.links import fix_app
from exporter.remediation.loop import RepairLoop
from exporter.server import Server, create_app, http_server, serve_until_signal
from exporter.sources import build_source
from exporter.sources.base import Source
from exporter.state import StateStore
from exporter.sweeps import SweepRunner, build_scheduler
from exporter.tracker import Tracker

log = logging.getLogger(__name__)


class Agent:
    """One running agent. ``start()`` loads state and schedules sweeps; ``serve()`` runs HTTP."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 sources: list[Source] | None = None):
        self.settings = settings
        self.clock = clock
        self.catalog = Catalog.default()
        self.metrics = build_metrics(lambda: self.tracker.snapshot, clock=clock,
                                     catalog=self.catalog)
        self.store = StateStore(settings.state.path)
        self.tracker = Tracker(
            self.store, catalog=self.catalog, clock=clock,
            otp_streak_threshold=settings.tracker.otp_streak_threshold,
            institution_min_accounts=settings.tracker.institution_min_accounts,
            events=self.metrics.agent, batch_size=settings.state.batch_size)
        if sources is None:
            sources = [build_source(cfg, self.metrics.agent, clock) for cfg in settings.sources]
        self.sources = sources
        self.repair: RepairLoop | None = None
        sweep_observer = self.metrics.agent
        if settings.remediation.enabled:
            self.repair = RepairLoop(
                settings.remediation, settings.state.path, sources={s.name: s for s in sources},
                snapshot=lambda: self.tracker.snapshot, clock=clock, observer=self.metrics.agent)
            self.tracker.subscribe(self.repair.on_events, steady=True)
            for s in sources:
                self.metrics.agent.remediation_source(s.name, s.provider)
            sweep_observer = _RepairSweepObserver(self.metrics.agent, self.repair)
        self.runner = SweepRunner(sources, self.tracker, sweep_observer, clock,
                                  on_snapshot=self.metrics.exposition.prerender)
        self.scheduler = build_scheduler(
            self.runner, {cfg.name: cfg.schedule for cfg in settings.sources})
        self.ready = False
        self.app = create_app(self.metrics.exposition, lambda: self.ready,
                              settings.web.telemetry_path)

    async def start(self) -> None:
        await self.tracker.load({s.name: s.provider for s in self.sources})
        if self.repair is not None:
            await self.repair.start()
        self.scheduler.start()
        self.ready = True
        log.info("agent started version=%s sources=%s state=%s", __version__,
                 ",".join(s.name for s in self.sources) or "(none)", self.settings.state.path)

    async def stop(self) -> None:
        """Stop scheduling, cancel running sweeps, close clients and flush state."""
        self.ready = False
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.runner.stop()
        if self.repair is not None:
            await self.repair.stop()
        for s in self.sources:
            await s.aclose()
        await self.tracker.close()
        log.info("agent stopped, state flushed")

    def http_server(self, listen_address: str) -> Server:
        return http_server(self.app, listen_address)

    def fix_server(self) -> Server | None:
        """The listener of ``GET /fix/<token>`` (``remediation.link: redirect``)."""
        cfg = self.settings.remediation
        if self.repair is None or cfg.link != "redirect" or not cfg.listen_address:
            return None
        return http_server(fix_app(self.repair, self.clock), cfg.listen_address)

    async def run(self, listen_address: str | None = None) -> None:
        """Serve until SIGINT/SIGTERM (uvicorn handles the signals), then stop cleanly."""
        servers = [self.http_server(listen_address or self.settings.web.listen_address)]
        fix = self.fix_server()
        if fix is not None:
            servers.append(fix)
            log.info("fix links listening address=%s", self.settings.remediation.listen_address)
        await self.start()
        log.info("listening address=%s", listen_address or self.settings.web.listen_address)
        try:
            await serve_until_signal(servers)
        finally:
            await self.stop()


class _RepairSweepObserver:
    """The sweep observer while the repair loop runs: the self-metrics, and each complete
    sweep also to the loop (its first one ends the backlog)."""

    def __init__(self, metrics: AgentMetrics, repair: RepairLoop):
        self._metrics = metrics
        self._repair = repair

    def __getattr__(self, name: str):
        return getattr(self._metrics, name)

    def sweep_finished(self, source: str, result: str, duration: float, *,
                       records: int | None = None, completed_at: float | None = None) -> None:
        self._metrics.sweep_finished(source, result, duration, records=records,
                                     completed_at=completed_at)
        self._repair.sweep_finished(source, completed_at is not None)
