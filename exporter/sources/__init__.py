"""Upstream sources: each polls one aggregator account and yields :class:`AccountStatus` records."""

from __future__ import annotations

import time

import httpx

from exporter.config import FinicitySourceConfig, MxSourceConfig
from exporter.sources.base import Clock, Source, UpstreamObserver


def build_source(
    config: FinicitySourceConfig | MxSourceConfig,
    observer: UpstreamObserver,
    clock: Clock = time.time,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Source:
    """The source for ``config.provider``; ``clock`` is wall time in epoch seconds."""
    if config.provider == "finicity":
        from exporter.sources.finicity import FinicitySource

        return FinicitySource(config, observer, clock=clock, transport=transport)
    if config.provider == "mx":
        from exporter.sources.mx import MxSource

        return MxSource(config, observer, clock=clock, transport=transport)
    raise ValueError(f"unknown provider {config.provider!r}")
