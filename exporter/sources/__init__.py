"""Upstream sources: each polls one aggregator account and yields :class:`AccountStatus` records."""

from __future__ import annotations

import time

import httpx

from exporter.config import FinicitySourceConfig, MxSourceConfig
from exporter.sources.base import Clock, Source, UpstreamObserver
from exporter.sources.drift import DEFAULT_MISSING_SHARE


def build_source(
    config: FinicitySourceConfig | MxSourceConfig,
    observer: UpstreamObserver,
    clock: Clock = time.time,
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    missing_share: float = DEFAULT_MISSING_SHARE,
) -> Source:
    """The source for ``config.provider``; ``clock`` is wall time in epoch seconds;
    ``missing_share`` is the config's ``drift.missing_share``."""
    if config.provider == "finicity":
        from exporter.sources.finicity import FinicitySource

        return FinicitySource(config, observer, clock=clock, transport=transport,
                              missing_share=missing_share)
    if config.provider == "mx":
        from exporter.sources.mx import MxSource

        return MxSource(config, observer, clock=clock, transport=transport,
                        missing_share=missing_share)
    raise ValueError(f"unknown provider {config.provider!r}")
