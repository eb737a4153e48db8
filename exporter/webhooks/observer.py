"""What the push side reports, as a Protocol the metrics implement (no Prometheus here).

``openfinance_webhook_events_total{source,kind,result}``,
``openfinance_push_refresh_duration_seconds{source}`` (DESIGN.md, "Push"),
``openfinance_push_refresh_failures_total{source,result}`` and
``openfinance_webhook_forward_duration_seconds{source}`` and
``openfinance_webhook_forward_failures_total{source,reason}`` ("Push at fleet scale").
"""

from __future__ import annotations

from typing import Protocol

RESULTS = ("accepted", "duplicate", "bad_signature", "unauthorized", "too_large", "malformed",
           "ignored", "forwarded")
"""Every value of the ``result`` label."""

REFRESH_FAILURES = ("retried", "given_up")
"""Every value of the ``result`` label of push_refresh_failures."""

FORWARD_FAILURES = ("unreachable", "unavailable")
"""Every value of the ``reason`` label of webhook_forward_failures: the owner's shard could
not be reached in time (refused, reset, timed out), or answered that it cannot take the
event (404 while it starts, 5xx). Either way the sender got 503 + ``Retry-After``."""


class WebhookObserver(Protocol):
    def webhooks_enabled(self, source: str) -> None:
        """``source`` takes webhooks (its zero series can be created)."""

    def webhook_event(self, source: str, kind: str, result: str) -> None:
        """One delivery answered: ``kind`` from :data:`exporter.webhooks.events.KINDS`,
        ``result`` from :data:`RESULTS`."""

    def push_refresh(self, source: str, seconds: float) -> None:
        """An event's re-read was applied, ``seconds`` after the event arrived."""

    def push_refresh_failed(self, source: str, result: str, events: int) -> None:
        """A re-read failed for ``events`` events: ``retried`` later, or ``given_up`` after
        ``give_up_after`` (:data:`REFRESH_FAILURES`)."""

    def webhook_forwarded(self, source: str, seconds: float) -> None:
        """A delivery was forwarded to its owner's shard, whose answer took ``seconds``."""

    def webhook_forward_failed(self, source: str, reason: str) -> None:
        """A delivery for another shard's owner could not be forwarded (``reason`` from
        :data:`FORWARD_FAILURES`); the sender was told to retry."""


class NullWebhookObserver:
    """Drops everything (tests, tools)."""

    def webhooks_enabled(self, source: str) -> None:
        pass

    def webhook_event(self, source: str, kind: str, result: str) -> None:
        pass

    def push_refresh(self, source: str, seconds: float) -> None:
        pass

    def push_refresh_failed(self, source: str, result: str, events: int) -> None:
        pass

    def webhook_forwarded(self, source: str, seconds: float) -> None:
        pass

    def webhook_forward_failed(self, source: str, reason: str) -> None:
        pass
