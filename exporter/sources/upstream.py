"""A source over one aggregator's HTTP API, assembled the same way for every aggregator.

:class:`UpstreamSource` builds what each aggregator's source reads through: the drift meter,
the HTTP client (retries, rate limit, observer), the payload reader and the
institution-name cache. An aggregator's package says only what differs: its headers, the
API version it speaks, the status field drift watches and how it looks an institution up.
"""

from __future__ import annotations

import abc
import asyncio
import random as _random
import time
from typing import TYPE_CHECKING, ClassVar

import httpx

from exporter.sources.base import Clock, NullObserver, Sleep, Source, UpstreamObserver
from exporter.sources.client import UpstreamClient
from exporter.sources.drift import DEFAULT_MISSING_SHARE, DriftMeter
from exporter.sources.payloads import PayloadReader
from exporter.sources.sharding import in_shard
from exporter.sources.sweep import TtlCache

if TYPE_CHECKING:
    from exporter.config import FinicitySourceConfig, MxSourceConfig


class UpstreamSource(Source):
    """A configured source reading one aggregator over HTTP (``clock``, ``monotonic``,
    ``sleep``, ``random`` and ``transport`` are injected so that tests never wait nor touch
    the network; ``missing_share`` is the config's ``drift.missing_share``)."""

    status_field: ClassVar[str]
    """The payload field that carries the status code (what the drift meter watches)."""

    def __init__(
        self,
        config: FinicitySourceConfig | MxSourceConfig,
        observer: UpstreamObserver | None = None,
        *,
        clock: Clock = time.time,
        monotonic: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        random: Clock = _random.random,
        transport: httpx.AsyncBaseTransport | None = None,
        missing_share: float = DEFAULT_MISSING_SHARE,
    ):
        config.require_credentials()
        self.name = config.name
        self.config = config
        self.observer = observer or NullObserver()
        self.clock = clock
        self.drift = DriftMeter(config.name, self.provider, self.observer,
                                status_field=self.status_field, missing_share=missing_share)
        self.observer.upstream_api(config.name, self.provider, self.api_version())
        self.http = UpstreamClient(
            source=config.name,
            base_url=config.base_url,
            http=config.http,
            observer=self.observer,
            headers=self.headers(),
            transport=transport,
            clock=clock,
            monotonic=monotonic,
            sleep=sleep,
            random=random,
            is_outcome_code=self.is_outcome_code,
            drift=self.drift,
        )
        self.payloads = PayloadReader(config.name, self.observer, clock, self.drift)
        self._institutions: TtlCache[str, str] = TtlCache(self._load_institution, clock)

    @abc.abstractmethod
    def api_version(self) -> str:
        """The API version this source speaks (``openfinance_upstream_api_info``)."""

    @abc.abstractmethod
    def headers(self) -> dict[str, str]:
        """The headers every request carries (credentials included)."""

    def is_outcome_code(self, code: int) -> bool:
        """Whether an error ``code`` in a 5xx body is an aggregation outcome (final, not
        retried); no aggregator but Finicity sends those."""
        return False

    @abc.abstractmethod
    async def _load_institution(self, institution_id: str) -> tuple[str, float]:
        """The institution's display name and how long to keep it (the name cache's loader)."""

    async def aclose(self) -> None:
        await self.http.aclose()

    def owns(self, owner_id: str) -> bool:
        return in_shard(owner_id, self.config.shard)
