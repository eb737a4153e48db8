"""The aggregators, one package each: a source polls one aggregator account and yields
:class:`~exporter.records.AccountStatus` records; everything past this edge is typed."""

from __future__ import annotations

import time

import httpx

from exporter.config import FinicitySourceConfig, MxSourceConfig
from exporter.sources.base import Clock, Source, UpstreamObserver
from exporter.sources.drift import DEFAULT_MISSING_SHARE
from exporter.upstreams.finicity import FinicitySource
from exporter.upstreams.mx import MxSource


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
        return FinicitySource(config, observer, clock=clock, transport=transport,
                              missing_share=missing_share)
    if config.provider == "mx":
        return MxSource(config, observer, clock=clock, transport=transport,
                        missing_share=missing_share)
    raise ValueError(f"unknown provider {config.provider!r}")
