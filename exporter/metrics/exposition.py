"""Serves /metrics: the snapshot part kept per institution block, the live part per scrape.

The snapshot part (fleet series and institution health, :mod:`exporter.metrics.snapshot_text`)
changes only when a snapshot is published or institution health changes, and then only in the
blocks of the institutions concerned: those are re-rendered, and only the gzip pieces they
touch are compressed again (:mod:`exporter.metrics.gzipped`). Joined text and gzip head are
kept per version and format; only the small live part (self-metrics and the age histograms,
whose ages grow with the clock) is rendered on each scrape, by
:class:`~exporter.metrics.lines.RegistryText` (prometheus_client's bytes, faster). Nothing here
does I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.metrics.gzipped import Deflated, GzipPieces
from exporter.metrics.lines import RegistryText
from exporter.metrics.snapshot_text import SnapshotText

OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST
# 0.0.4: what Prometheus 2.x and every scraper understands.
TEXT = text_format.CONTENT_TYPE_PLAIN_0_0_4


class Exposition:
    """Serves /metrics: the cached snapshot part plus a freshly rendered live part."""

    def __init__(self, snapshot_part: SnapshotText, live: CollectorRegistry):
        self._part = snapshot_part
        self._live = RegistryText(live)
        self._lock = threading.Lock()
        self._version: Hashable = object()
        self._plain: dict[bool, bytes] = {}
        self._deflated: dict[bool, Deflated] = {}
        self._gzip = {False: GzipPieces(), True: GzipPieces()}

    def _current(self) -> None:
        """Under the lock: bring the blocks up to date; drop what an older version joined."""
        version = self._part.update()
        if version != self._version:
            self._version = version
            self._plain.clear()
            self._deflated.clear()

    def _fleet_bytes(self, openmetrics_format: bool) -> bytes:
        """The snapshot part as text, joined at most once per version."""
        with self._lock:
            self._current()
            hit = self._plain.get(openmetrics_format)
            if hit is None:
                hit = self._plain[openmetrics_format] = b"".join(
                    self._part.pieces(openmetrics_format))
            return hit

    def _fleet_gzip(self, openmetrics_format: bool) -> tuple[GzipPieces, Deflated]:
        """The snapshot part as the head of a gzip member, deflated at most once per version
        (and then only the pieces that changed)."""
        with self._lock:
            self._current()
            hit = self._deflated.get(openmetrics_format)
            if hit is None:
                hit = self._deflated[openmetrics_format] = self._gzip[openmetrics_format].deflate(
                    self._part.pieces(openmetrics_format))
            return self._gzip[openmetrics_format], hit

    def prerender(self) -> None:
        """Render what Prometheus will ask for (OpenMetrics, gzip) before the next scrape."""
        self._fleet_gzip(True)

    def render(self, accept: str = "", accept_encoding: str = "") -> tuple[bytes, str, bool]:
        """(body, content type, gzipped) for a scrape with these request headers."""
        use_om = "application/openmetrics-text" in accept
        live = self._live.render(use_om)
        content_type = OPENMETRICS if use_om else TEXT
        if "gzip" in accept_encoding:
            pieces, head = self._fleet_gzip(use_om)
            return pieces.finish(head, live), content_type, True
        return self._fleet_bytes(use_om) + live, content_type, False
