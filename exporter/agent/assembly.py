"""Assembles the agent from a configuration, in the order its parts depend on each other:
self-metrics, state, tracker, sources, institution health, routing, repair loop, push,
/metrics, sweeps, the HTTP app (:meth:`Agent.__init__`, read top to bottom).

There is no module-level state: everything is built here and passed down, so tests and the
``demo`` command can build as many agents as they like.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from starlette.routing import Route

from exporter import __version__
from exporter.agent.sweeps import SweepNotices, SweepRunner, build_scheduler
from exporter.aio import Gate
from exporter.config import Settings
from exporter.health.wiring import HealthWiring
from exporter.metrics import agent_metrics, build_metrics
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
from exporter.tracker import Snapshot, Tracker
from exporter.upstreams import build_source
from exporter.web.limits import REFUSALS, ListenerLimits
from exporter.web.server import Server, create_app, http_server, serve_until_signal
from exporter.web.toolkit import WebConfigFile
from exporter.webhooks.service import PushService

log = logging.getLogger(__name__)

#: How long a stop waits for the webhook deliveries and fix clicks in flight (a body may
#: take ``webhooks.read_timeout`` to arrive, 10 s by default).
DRAIN_FOR = 12.0


class Agent:
    """One running agent, built part by part in dependency order, each part from parts already
    built (nothing starts here). ``start()`` loads state and schedules sweeps; ``run()``
    serves HTTP."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time,
                 sources: list[Source] | None = None):
        self.settings = settings
        self.clock = clock
        self.catalog = Catalog.default()
        self_metrics = agent_metrics()  # every part below reports to them
        # State: one agent per file, one owner of it; the tracker's store on it.
        self.state_file = open_state_file(settings.state.path)
        if self.state_file.recovered_to is not None:
            self_metrics.state_recovered()
        self.db = StateDatabase(settings.state.path)  # the one owner of the state file
        self.store = StateStore(self.db)
        # Tracker: records in, account events and snapshots out.
        self.tracker = tracker = Tracker(
            self.store, catalog=self.catalog, clock=clock,
            otp_streak_threshold=settings.tracker.otp_streak_threshold,
            institution_min_accounts=settings.tracker.institution_min_accounts,
            max_unknown_codes=settings.tracker.max_unknown_codes,
            events=self_metrics, batch_size=settings.state.batch_size)

        def snapshot() -> Snapshot:  # health, the repair loop and /metrics read it
            return tracker.snapshot

        # Sources: the configured upstreams (or the ones given, in tests and the demo).
        if sources is None:
            sources = [build_source(cfg, self_metrics, clock,
                                    missing_share=settings.drift.missing_share)
                       for cfg in settings.sources]
        self.sources = sources
        by_name = {s.name: s for s in sources}
        # Institution health: fed by the sources' institution lookups.
        self.health = health = HealthWiring(settings.health, sources, snapshot, clock, self.db)
        # Routing advice: from the health reports, kept in the state database.
        self.routing = routing = Advisor(settings.routing, (s.provider for s in sources),
                                         self_metrics)
        self.routing_store = RoutingStore(self.db)
        # Webhook deliveries and fix clicks pass through the gate; a stop closes it first.
        self.gate = Gate()
        # Repair loop (optional): a tracker subscriber; its fix links go on the webhook
        # listener (the contract's place for them, internet-facing).
        self.repair: RepairLoop | None = None
        fix_routes: list[Route] = []
        if settings.remediation.enabled:
            self.repair = RepairLoop(
                settings.remediation, self.db, sources=by_name,
                snapshot=snapshot, clock=clock, observer=self_metrics)
            tracker.subscribe(self.repair.on_events, steady=True)
            for s in sources:
                self_metrics.remediation_source(s.name, s.provider)
            if settings.remediation.link == "redirect":
                fix_routes.append(fix_route(self.repair, clock, self.gate))
        # Push (optional): the webhook listener; owners re-read, applied through the tracker.
        self.push: PushService | None = None
        if settings.webhooks is not None:
            self.push = PushService(
                settings.webhooks, settings.sources, by_name, tracker, self_metrics,
                self.db, clock=clock, gate=self.gate, routes=fix_routes)
        # /metrics: the collectors over the snapshot, health and routing; the self-metrics.
        self.metrics = build_metrics(snapshot, clock=clock, catalog=self.catalog,
                                     institutions=lambda: health, routing=lambda: routing,
                                     agent=self_metrics)
        # Sweeps: one job per source; then the repair loop and health hear each sweep.
        repair = [self.repair] if self.repair is not None else []
        notices = SweepNotices(self_metrics, started=[r.sweep_started for r in repair],
                               done=[*(r.sweep_done for r in repair), health.sweep_done])
        self.runner = SweepRunner(sources, tracker, notices, clock,
                                  on_snapshot=self.metrics.exposition.prerender)
        self.scheduler = build_scheduler(self.runner, {c.name: c.schedule for c in settings.sources})
        health.schedule(self.scheduler)
        routing.schedule(self.scheduler, health.report, self.routing_store)
        # HTTP: /metrics, the probes, and the health and routing pages.
        self.web_config = (WebConfigFile(settings.web.config_file, observer=self_metrics)
                           if settings.web.config_file else None)
        self.ready = self._stopped = False
        self.app = create_app(self.metrics.exposition, lambda: self.ready,
                              settings.web.telemetry_path,
                              [*health.routes(routing.update),
                               *routing_routes(routing, health.report)])

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
        await self.tracker.close()  # last: the state database's queued writes, a checkpoint
        self.state_file.release()
        log.info("agent stopped, state flushed")

    def http_server(self, listen_address: str) -> Server:
        web = self.settings.web
        return http_server(self.app, listen_address, self.web_config, limits=ListenerLimits(
            read_header_timeout=web.read_header_timeout, max_connections=web.max_connections,
            refused=self.metrics.agent.listener("metrics", REFUSALS)))

    def http_servers(self, listen_address: str | None = None) -> list[Server]:
        """The metrics server, and the webhook listener on its own address when push is on."""
        servers = [self.http_server(listen_address or self.settings.web.listen_address)]
        hooks = self.settings.webhooks
        if self.push is not None and hooks is not None:
            servers.append(http_server(
                self.push.app, hooks.listen_address, self.web_config, authenticate=False,
                limits=ListenerLimits(read_header_timeout=hooks.read_header_timeout,
                                      max_connections=hooks.max_connections,
                                      refused=self.metrics.agent.listener("webhooks", REFUSALS))))
        return servers

    def fix_server(self) -> Server | None:
        """A listener of its own for ``GET /fix/<token>`` (``remediation.listen_address``);
        with push on, the webhook listener serves the links as well."""
        cfg = self.settings.remediation
        if self.repair is None or cfg.link != "redirect" or not cfg.listen_address:
            return None
        return http_server(fix_app(self.repair, self.clock, self.gate), cfg.listen_address,
                           limits=ListenerLimits(refused=self.metrics.agent.listener("fix", REFUSALS)))

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

