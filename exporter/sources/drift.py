"""Noticing an upstream that moves under the agent: a version refused, a field the parser
needs gone from a share of an answer's records, an answer of a shape no model fits.

A source owns one :class:`DriftMeter`; its HTTP client and payload reader report through it.
Each kind is counted (``openfinance_upstream_drift_total{source,provider,kind}``) and logged
at warning level the first time per sweep, with the field, status or route — never ids.
Statuses outside the catalogue (``unknown_status``) are found by the tracker and counted by
the agent's metrics through the same counter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from exporter.records import STATUS_MISSING, AccountStatus
from exporter.sources.base import UpstreamObserver

log = logging.getLogger(__name__)

DRIFT_KINDS = ("version_refused", "field_missing", "unknown_status", "shape")
VERSION_REFUSED_STATUSES = (406, 415)
DEFAULT_MISSING_SHARE = 0.02


def names_version(status: int, message: str | None) -> bool:
    """Whether an error answer refuses the API version or media type we asked for:
    406 / 415, or a client error whose message names the version or its header."""
    if status in VERSION_REFUSED_STATUSES:
        return True
    if not 400 <= status < 500 or status in (401, 404, 429) or not message:
        return False
    text = message.lower()
    return "version" in text or "media type" in text


class DriftMeter:
    """One source's drift: counted per occurrence, logged once per kind and sweep.

    ``status_field`` is the field the parser needs on every record (MX
    ``connection_status``, Finicity ``aggregationStatusCode``). Records lacking it are
    tallied through :meth:`records`; at the end of a sweep (or at once for a read outside a
    sweep, such as a pushed re-read) a share above ``missing_share`` counts one
    ``field_missing``.
    """

    def __init__(self, source: str, provider: str, observer: UpstreamObserver, *,
                 status_field: str, missing_share: float = DEFAULT_MISSING_SHARE):
        self.source = source
        self.provider = provider
        self.status_field = status_field
        self.missing_share = missing_share
        self._observer = observer
        self._logged: set[str] = set()
        self._sweeps = 0
        self._total = 0
        self._missing = 0

    def report(self, kind: str, detail: str) -> None:
        """Count one occurrence of ``kind``; log the first of each kind per sweep."""
        self._observer.upstream_drift(self.source, self.provider, kind)
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("upstream drift source=%s provider=%s kind=%s: %s (check the "
                        "aggregator's changelog and the source's api_version; further ones "
                        "this sweep are only counted)", self.source, self.provider, kind, detail)

    def refused(self, route: str, status: int, message: str | None) -> None:
        """An error answer: counted as ``version_refused`` when it refuses our version."""
        if names_version(status, message):
            text = f": {message}" if message else ""
            self.report("version_refused", f"{route} answered HTTP {status}{text}")

    def shape(self, route: str, where: str) -> None:
        """A whole answer that fits no model (one bad record is an invalid record instead)."""
        self.report("shape", f"{route} answered a body of an unexpected shape (at {where})")

    @contextmanager
    def sweep(self) -> Iterator[None]:
        """Around one sweep: first occurrences are logged afresh, and the records lacking
        the status field are judged against the whole sweep when it ends."""
        self._sweeps += 1
        if self._sweeps == 1:
            self._logged.clear()
            self._total = self._missing = 0
        try:
            yield
        finally:
            self._sweeps -= 1
            if self._sweeps == 0:
                self._judge(self._total, self._missing, "the sweep's")
                self._total = self._missing = 0

    def records(self, records: Sequence[AccountStatus]) -> Sequence[AccountStatus]:
        """One answer's records, tallied for those without the status field; returned as
        they are (the tracker keeps the last known state of those)."""
        missing = sum(1 for r in records if r.code == STATUS_MISSING)
        if self._sweeps:
            self._total += len(records)
            self._missing += missing
        else:
            self._judge(len(records), missing, "a re-read's")
        return records

    def _judge(self, total: int, missing: int, whose: str) -> None:
        if missing and missing > self.missing_share * total:
            self.report("field_missing",
                        f"field {self.status_field} absent from {missing} of {whose} {total} "
                        f"records ({missing / total:.1%}); those accounts keep their last "
                        f"known state")
