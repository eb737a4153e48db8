"""What every source implements, and the hooks it reports through.

Sources know nothing of Prometheus: they report upstream traffic to an
:class:`UpstreamObserver` (implemented by ``exporter.metrics``) and hand records to a
:class:`SweepSink` (implemented by the tracker's sweep session).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from exporter.records import AccountStatus
from exporter.sources.institution import Institution

Clock = Callable[[], float]
"""Seconds: wall time (epoch) or monotonic, injected so that tests never wait."""
Sleep = Callable[[float], Awaitable[None]]


class UpstreamObserver(Protocol):
    """Receives one call per upstream HTTP exchange, retry and auth failure."""

    def request(self, source: str, endpoint: str, status_code: str, duration: float) -> None:
        """``endpoint`` is the route template (``/aggregation/v1/customers/{customerId}/accounts``)."""

    def retry(self, source: str, reason: str) -> None:
        """``reason``: ``rate_limited``, ``server_error``, ``timeout``, ``connect_error``, ``token_expired``."""

    def invalid_record(self, source: str, reason: str) -> None:
        """A payload or record that could not be used, or a field that was dropped.

        ``reason``: one of ``exporter.sources.payloads.REASONS``.
        """

    def auth_failure(self, source: str) -> None:
        """The aggregator refused our credentials; the source has stopped itself."""

    def upstream_drift(self, source: str, provider: str, kind: str) -> None:
        """The upstream moved: ``kind`` is one of ``exporter.sources.drift.DRIFT_KINDS``."""

    def upstream_api(self, source: str, provider: str, version: str) -> None:
        """The API version a source speaks (set once, when the source is built)."""


class NullObserver:
    """An observer that drops everything (tests, tools)."""

    def request(self, source: str, endpoint: str, status_code: str, duration: float) -> None:
        pass

    def retry(self, source: str, reason: str) -> None:
        pass

    def invalid_record(self, source: str, reason: str) -> None:
        pass

    def auth_failure(self, source: str) -> None:
        pass

    def upstream_drift(self, source: str, provider: str, kind: str) -> None:
        pass

    def upstream_api(self, source: str, provider: str, version: str) -> None:
        pass


class SweepSink(Protocol):
    """Where a sweep delivers its records, chunk by chunk, and reports progress."""

    async def add(self, records: Sequence[AccountStatus]) -> None:
        """Apply a chunk of records (may be called many times per sweep, also by
        concurrent tasks of one sweep)."""

    def progress(self, done: int, total: int | None) -> None:
        """Customers/users done so far, and the total when known."""


@dataclass(slots=True)
class SweepReport:
    """How a sweep ended. ``complete`` is True only if every customer/user was read.

    Only a complete sweep may drop accounts it did not see; a partial one keeps their last
    state.
    """

    complete: bool
    units_total: int = 0
    units_failed: int = 0
    records: int = 0
    error: str | None = None


class SweepFailed(Exception):
    """The sweep could not start or was aborted (auth refused, list endpoint down)."""


class AuthLockoutRisk(SweepFailed):
    """Authentication was refused: the source stops until restart or config change.

    Finicity locks a partner out after five failed logins, so we never retry it in a loop.
    """


class Source(abc.ABC):
    """A configured upstream (``finicity-prod``) that can sweep its whole fleet.

    An *owner* is a Finicity customer or an MX user; a *login* a Finicity institution login
    or an MX member.
    """

    name: str
    provider: str

    @abc.abstractmethod
    async def sweep(self, sink: SweepSink) -> SweepReport:
        """Read every account once, deliver records to ``sink``; never raise for one bad unit."""

    @abc.abstractmethod
    async def refresh_owner(self, owner_id: str) -> list[AccountStatus]:
        """Re-read one owner's accounts (same token, rate limit and retries as a sweep).

        ``[]`` when the owner is gone (404); raises :class:`SweepFailed` when the
        credentials are refused and ``UpstreamError`` when the upstream fails.
        """

    @abc.abstractmethod
    def owns(self, owner_id: str) -> bool:
        """Whether this replica's shard holds that owner."""

    @abc.abstractmethod
    async def fix_link(self, owner_id: str, login_id: str) -> str:
        """A Connect Fix entry point for one login; ``UpstreamError`` when none was given.

        The URL is a bearer secret: never log it.
        """

    institution_seen: Callable[[str, str, Institution], None] | None = None
    """Set by the agent (institution health): called with (institution_id, name,
    institution) after each successful institution lookup of the name cache."""

    def seen_hook(self, institution_id: str) -> Callable[[str, Institution], None] | None:
        """``institution_seen`` bound to one institution, for ``sweep.institution_name``."""
        hook = self.institution_seen
        return None if hook is None else lambda name, found: hook(institution_id, name, found)

    async def institution(self, institution_id: str) -> Institution | None:
        """The institution as the aggregator describes it, None when unknown (404);
        ``UpstreamError`` when the lookup fails. Institution health re-reads declared statuses
        with it (same client, token and rate limit as a sweep)."""
        raise NotImplementedError(f"{type(self).__name__} has no institution lookup")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release HTTP clients."""
