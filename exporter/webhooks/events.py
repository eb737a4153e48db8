"""The readers of the aggregators' webhook bodies, as the receivers call them, and every
value of the ``kind`` label. The bodies are read by their aggregator's package into a typed
:class:`~exporter.sources.notices.Delivery` (or :class:`~exporter.sources.notices.Malformed`).
"""

from __future__ import annotations

from exporter.upstreams.finicity.webhooks import (
    FINICITY_ACTIONABLE,
    FINICITY_PASSIVE,
    TXPUSH_KINDS,
    txpush,
)
from exporter.upstreams.finicity.webhooks import connect as finicity_connect
from exporter.upstreams.mx.webhooks import MX_ACTIONABLE
from exporter.upstreams.mx.webhooks import notice as mx

KINDS = frozenset({
    "ping", *FINICITY_ACTIONABLE, *FINICITY_PASSIVE, *MX_ACTIONABLE.values(), *TXPUSH_KINDS,
    "other", "unknown"})
"""Every value of the ``kind`` label: ``unknown`` before the body could be read or trusted,
``other`` for an event type this agent does not know (answered 2xx, counted ``ignored``)."""

__all__ = ["KINDS", "finicity_connect", "mx", "txpush"]
