"""What the repair loop reports, so the Prometheus side can count it without this package
knowing Prometheus (wired in ``exporter.metrics``).

Metrics (DESIGN.md): ``openfinance_fix_requests_total{source,provider,kind,result}``,
``openfinance_fix_requests_pending{source}``, ``openfinance_fix_requests_held{source,
institution_id,institution}``, ``openfinance_fix_outcomes_total{source,provider,outcome}``,
``openfinance_fix_resolution_seconds{source,provider,category}``,
``openfinance_fix_events_ignored_total{source,reason}``, ``openfinance_fix_clicks_total{result}``,
``openfinance_fix_institution_outcomes_total{source,provider,institution_id,institution,code,
outcome}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

REQUEST_RESULTS = ("delivered", "retried", "failed", "held", "dead")
OUTCOMES = ("fixed", "rebroke", "abandoned")
IGNORE_REASONS = ("no_login_id", "no_owner_id")
INSTITUTION_OUTCOMES = ("requested", "fixed", "abandoned")
CLICK_RESULTS = ("redirected", "invalid", "expired", "nothing_to_fix", "rate_limited",
                 "unavailable", "stopping")


class RemediationObserver(Protocol):
    def fix_request(self, source: str, provider: str, kind: str, result: str) -> None:
        """One fix request changed: ``result`` in :data:`REQUEST_RESULTS`."""

    def fix_outcome(self, source: str, provider: str, outcome: str) -> None:
        """An episode whose request was delivered ended (``fixed``, ``abandoned``) or a fixed
        login broke again within 7 days (``rebroke``)."""

    def fix_resolution(self, source: str, provider: str, category: str, seconds: float) -> None:
        """Request delivered → login back at ok, by the category the request was made for."""

    def fix_pending(self, counts: Mapping[str, int]) -> None:
        """Requests waiting for delivery (incl. retries), per source: the whole current set."""

    def fix_held(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        """Requests held by the storm guard per (source, institution_id, institution)."""

    def fix_event_ignored(self, source: str, reason: str) -> None:
        """An account event that could not open an episode (``no_login_id`` …)."""

    def fix_click(self, result: str) -> None:
        """A click on a ``/fix/<token>`` link answered (:data:`CLICK_RESULTS`)."""

    def fix_institution(self, source: str, provider: str, institution_id: str,
                        institution: str, code: str, outcome: str | None) -> None:
        """A step of one institution's repair funnel (:data:`INSTITUTION_OUTCOMES`), with
        the labels the fleet metrics show (folded ones as ``other``); ``None``: an episode
        opened there, its series can be created at zero."""


class NullRemediationObserver:
    """Drops everything (tests, tools)."""

    def fix_request(self, source: str, provider: str, kind: str, result: str) -> None:
        pass

    def fix_outcome(self, source: str, provider: str, outcome: str) -> None:
        pass

    def fix_resolution(self, source: str, provider: str, category: str, seconds: float) -> None:
        pass

    def fix_pending(self, counts: Mapping[str, int]) -> None:
        pass

    def fix_held(self, counts: Mapping[tuple[str, str, str], int]) -> None:
        pass

    def fix_event_ignored(self, source: str, reason: str) -> None:
        pass

    def fix_click(self, result: str) -> None:
        pass

    def fix_institution(self, source: str, provider: str, institution_id: str,
                        institution: str, code: str, outcome: str | None) -> None:
        pass
