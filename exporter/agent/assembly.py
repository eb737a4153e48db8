"""Assembles the agent from a configuration: store, tracker, metrics, sources, scheduler, server.

There is no module-level state: everything is built here and passed down, so tests and the
``demo`` command can build as many agents as they like.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from exporter import __version__
from exporter.agent.sweeps import SweepRunner, build_scheduler
from exporter.aio import Gate
from exporter.config import Settings
from exporter.health.wiring import HealthWiring
from exporter.metrics import build_metrics
from exporter.metrics.observers import AgentMetrics
from exporter.remediation.links import fix_app, fix_route
from exporter.remediation.loop import RepairLoop
from exporter.routing.advisor import Advisor
from exporter.routing.routes import routing_routes
from exporter.routing.store import RoutingStore
from exporter.sources.base import Source
from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.state.file import open_state_file
from exporter.status_codes import Catalog
from exporter.tracker import Tracker
from exporter.upstreams import build_source
from exporter.web.limits import ListenerLimits
from exporter.web.server import Server, create_app, http_server, serve_until_signal
from exporter.web.toolkit import WebConfigFile
from exporter.webhooks.service import PushService

log = logging.getLogger(__name__)

#: How long a stop waits for the webhook deliveries and fix clicks in flight (a body may
#: take ``webhooks.read_timeout`` to arrive, 10 s by default).
DRAIN_FOR = 12.0


class Agent:
    """One running agent. ``start()`` loads state and schedules sweeps; ``serve()`` runs HTTP."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 sources: list[Source] | None = None):
        self.settings = settings
        self.clock = clock
        self.catalog = Catalog.default()
        self.metrics = build_metrics(lambda: self.tracker.snapshot, clock=clock,
                                     catalog=self.catalog,
                                     institutions=lambda: self.health,
                                     routing=lambda: getattr(self, "routing", None))
        self.state_file = open_state_file(settings.state.path)  # one agent per file
        if self.state_file.recovered_to is not None:
            self.metrics.agent.state_recovered()
        self.db = StateDatabase(settings.state.path)  # the one owner of the state file
        self.store = StateStore(self.db)
        self.tracker = Tracker(
            self.store, catalog=self.catalog, clock=clock,
            otp_streak_threshold=settings.tracker.otp_streak_threshold,
            institution_min_accounts=settings.tracker.institution_min_accounts,
            max_unknown_codes=settings.tracker.max_unknown_codes,
            events=self.metrics.agent, batch_size=settings.state.batch_size)
        if sources is None:
            sources = [build_source(cfg, self.metrics.agent, clock,
                                    missing_share=settings.drift.missing_share)
                       for cfg in settings.sources]
        self.sources = sources
        self.repair: RepairLoop | None = None
        if settings.remediation.enabled:
            self.repair = RepairLoop(
                settings.remediation, self.db, sources={s.name: s for s in sources},
                snapshot=lambda: self.tracker.snapshot, clock=clock, observer=self.metrics.agent)
            self.tracker.subscribe(self.repair.on_events, steady=True)
            for s in sources:
                self.metrics.agent.remediation_source(s.name, s.provider)
        self.health = HealthWiring(settings.health, sources, lambda: self.tracker.snapshot,
                                   clock, self.db)
        self.routing = Advisor(settings.routing, (s.provider for s in sources),
                               self.metrics.agent)
        self.routing_store = RoutingStore(self.db)
        self.runner = SweepRunner(sources, self.tracker,
                                  _SweepObservers(self.metrics.agent, self.repair, self.health),
                                  clock, on_snapshot=self.metrics.exposition.prerender)
        self.scheduler = build_scheduler(
            self.runner, {cfg.name: cfg.schedule for cfg in settings.sources})
        self.web_config = (WebConfigFile(settings.web.config_file, observer=self.metrics.agent)
                           if settings.web.config_file else None)
        self.health.schedule(self.scheduler)
        self.routing.schedule(self.scheduler, self.health.report, self.routing_store)
        # Webhook deliveries and fix clicks pass through it; a stop closes it first.
        self.gate = Gate()
        self.push: PushService | None = None
        if settings.webhooks is not None:
            self.push = PushService(
                settings.webhooks, settings.sources, {s.name: s for s in sources},
                self.tracker, self.metrics.agent, self.db, clock=clock,
                gate=self.gate)
            if self.repair is not None and settings.remediation.link == "redirect":
                # The contract's place for fix links: the internet-facing webhook listener.
                self.push.app.router.routes.append(fix_route(self.repair, clock, self.gate))
        self.ready = False
        self._stopped = False
        self.app = create_app(self.metrics.exposition, lambda: self.ready,
                              settings.web.telemetry_path,
                              [*self.health.routes(self.routing.update),
                               *routing_routes(self.routing, self.health.report)])

    async def start(self) -> None:
        await self.tracker.load({s.name: s.provider for s in self.sources})
        if self.push is not None:
            await self.push.start()  # first: events acknowledged before a crash are redone
        if self.repair is not None:
            await self.repair.start()
        await self.routing.load(self.routing_store)
        self.scheduler.start()
        self.ready = True
        log.info("agent started version=%s sources=%s state=%s", __version__,
                 ",".join(s.name for s in self.sources) or "(none)", self.settings.state.path)

    async def stop(self) -> None:
        """Stop (once), in this order: readiness false (the Service stops routing here); new
        webhook deliveries and fix clicks answered 503 with ``Retry-After`` while those in
        flight finish (up to :data:`DRAIN_FOR`); scheduling stopped and running sweeps
        cancelled; push, the repair loop and the other stores closed; state flushed."""
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        if not await self.gate.close(DRAIN_FOR):
            log.warning("stopping with %d webhook or fix-link requests still in flight after "
                        "%gs", self.gate.inside, DRAIN_FOR)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        await self.runner.stop()
        # Push first: its re-reads are applied through the tracker, whose events the repair
        # loop folds; the loop stops once nothing can send it more.
        if self.push is not None:
            await self.push.stop()
        if self.repair is not None:
            await self.repair.stop()
        await self.health.close()
        await self.routing.save(self.routing_store)
        for s in self.sources:
            await s.aclose()
        await self.tracker.close()
        self.state_file.release()
        log.info("agent stopped, state flushed")

    def http_server(self, listen_address: str) -> Server:
        web = self.settings.web
        return http_server(self.app, listen_address, self.web_config, limits=ListenerLimits(
            read_header_timeout=web.read_header_timeout, max_connections=web.max_connections))

    def http_servers(self, listen_address: str | None = None) -> list[Server]:
        """The metrics server, and the webhook listener on its own address when push is on."""
        servers = [self.http_server(listen_address or self.settings.web.listen_address)]
        hooks = self.settings.webhooks
        if self.push is not None and hooks is not None:
            servers.append(http_server(
                self.push.app, hooks.listen_address, self.web_config, authenticate=False,
                limits=ListenerLimits(read_header_timeout=hooks.read_header_timeout,
                                      max_connections=hooks.max_connections)))
        return servers

    def fix_server(self) -> Server | None:
        """A listener of its own for ``GET /fix/<token>`` (``remediation.listen_address``);
        with push on, the webhook listener serves the links as well."""
        cfg = self.settings.remediation
        if self.repair is None or cfg.link != "redirect" or not cfg.listen_address:
            return None
        return http_server(fix_app(self.repair, self.clock, self.gate), cfg.listen_address)

    async def run(self, listen_address: str | None = None) -> None:
        """Serve until SIGINT/SIGTERM (uvicorn handles the signals), then stop cleanly."""
        servers = self.http_servers(listen_address)
        fix = self.fix_server()
        if fix is not None:
            servers.append(fix)
            log.info("fix links listening address=%s", self.settings.remediation.listen_address)
        await self.start()
        web = self.web_config
        log.info("listening address=%s tls=%s basic_auth=%s web_config=%s",
                 listen_address or self.settings.web.listen_address,
                 "on" if web and web.tls_enabled else "off",
                 "on" if web and web.auth.enabled else "off",
                 web.path if web else "none")
        if self.settings.webhooks is not None:
            log.info("webhooks listening address=%s", self.settings.webhooks.listen_address)
        try:
            # Stop while the servers still answer: /metrics and /-/healthy during shutdown.
            await serve_until_signal(servers, before_stop=self.stop)
        finally:
            await self.stop()


class _SweepObservers:
    """The sweep observer: the self-metrics, then what follows sweeps. The repair loop hears
    when a sweep starts and ends (deliveries are paced meanwhile, and no request is created
    for that source until its snapshot is published) and each complete sweep (its first one
    ends the backlog); institution health hears each published snapshot (institutions that
    turned unhealthy have their declared status re-read at once)."""

    def __init__(self, metrics: AgentMetrics, repair: RepairLoop | None, health: HealthWiring):
        self._metrics = metrics
        self._repair = repair
        self._health = health

    def __getattr__(self, name: str):
        return getattr(self._metrics, name)

    def sweep_started(self, source: str) -> None:
        self._metrics.sweep_started(source)
        if self._repair is not None:
            self._repair.sweep_started(source)

    def sweep_cancelled(self, source: str, duration: float) -> None:
        self._metrics.sweep_cancelled(source, duration)
        if self._repair is not None:
            self._repair.sweep_ended(source, published=False)

    def sweep_finished(self, source: str, result: str, duration: float, *,
                       records: int | None = None, completed_at: float | None = None) -> None:
        self._metrics.sweep_finished(source, result, duration, records=records,
                                     completed_at=completed_at)
        if self._repair is not None:
            self._repair.sweep_finished(source, completed_at is not None,
                                        published=result != "failed")
        if result != "failed":
            self._health.sweep_published(source)
