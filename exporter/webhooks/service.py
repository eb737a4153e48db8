"""Push assembled: the inbox, the listener's app and the processor, started and stopped with
the agent. The app exists from construction (so a ``Server`` can be built early); its routes
answer 404 until :meth:`PushService.start` has opened the inbox and resolved the secrets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.routing import Route

from exporter.aio import Gate
from exporter.config import SourceConfig
from exporter.sources.base import Source
from exporter.state.database import StateDatabase
from exporter.tracker import Tracker
from exporter.webhooks.app import Receiver, build_receivers, create_webhook_app
from exporter.webhooks.config import WebhooksConfig
from exporter.webhooks.forward import Forwarder
from exporter.webhooks.inbox import WebhookInbox
from exporter.webhooks.observer import WebhookObserver
from exporter.webhooks.processor import PushProcessor

log = logging.getLogger(__name__)


class PushService:
    def __init__(self, config: WebhooksConfig, source_configs: Sequence[SourceConfig],
                 sources: Mapping[str, Source], tracker: Tracker,
                 observer: WebhookObserver, database: StateDatabase, *,
                 clock: Callable[[], float] = time.time, gate: Gate | None = None,
                 routes: Sequence[Route] = ()):
        """``routes``: other features' routes on the webhook listener (the fix links)."""
        self.config = config
        self.source_configs = list(source_configs)
        self.sources = sources
        self.clock = clock
        self.observer = observer
        self.inbox = WebhookInbox(database)
        self.processor = PushProcessor(
            self.inbox, sources, tracker, observer, clock=clock,
            concurrency=config.concurrency, backoff=config.retry_backoff,
            backoff_max=config.retry_backoff_max, give_up_after=config.give_up_after)
        self.receivers: dict[str, Receiver] = {}
        self.forward = Forwarder.from_config(config.peers, self.source_configs, observer)
        self.app: Starlette = create_webhook_app(
            self.receivers, self.inbox, observer, clock=clock,
            max_body_bytes=config.max_body_bytes, read_timeout=config.read_timeout,
            on_accepted=self.processor.add, forward=self.forward, gate=gate,
            routes=routes)

    async def start(self) -> None:
        """Open the inbox (raises ``InboxError``), resolve the secrets, start processing
        what is pending (events acknowledged before a crash included)."""
        await self.inbox.open()
        owns = {name: src.owns for name, src in self.sources.items()}
        self.receivers.update(await build_receivers(
            self.source_configs, owns, self.inbox, self.clock()))
        for name in self.receivers:
            self.observer.webhooks_enabled(name)
        await self.processor.start()
        log.info("webhooks ready sources=%s pending=%d",
                 ",".join(sorted(self.receivers)) or "(none)", self.processor.backlog)

    async def stop(self) -> None:
        self.receivers.clear()
        await self.processor.stop()
        await self.inbox.close()
        if self.forward is not None:
            await self.forward.aclose()
