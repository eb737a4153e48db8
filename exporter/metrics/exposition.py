"""Serves /metrics: the fleet part rendered once per snapshot, the live part per scrape.

Fleet series change only when a sweep lands, so :class:`Exposition` renders them once per
snapshot (text and OpenMetrics, plain and gzip) and serves those bytes; only the small live
part (self-metrics and the age histograms, whose ages grow with the clock) is rendered on
each scrape. Nothing here does I/O.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics

OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST
# 0.0.4: what Prometheus 2.x and every scraper understands.
TEXT = text_format.CONTENT_TYPE_PLAIN_0_0_4
_EOF = b"# EOF\n"


class Exposition:
    """Serves /metrics: cached fleet bytes per snapshot plus a freshly rendered live part."""

    def __init__(self, fleet: CollectorRegistry, live: CollectorRegistry,
                 version: Callable[[], int]):
        self._fleet = fleet
        self._live = live
        self._version = version
        self._lock = threading.Lock()
        self._cache: tuple[int, dict] | None = None

    def _fleet_bytes(self, openmetrics_format: bool) -> bytes:
        """The fleet part for one format, rendered at most once per snapshot version."""
        parts = self._parts()
        with self._lock:
            if openmetrics_format not in parts:
                if openmetrics_format:
                    plain = openmetrics.generate_latest(self._fleet)
                    plain = plain[: -len(_EOF)] if plain.endswith(_EOF) else plain
                else:
                    plain = text_format.generate_latest(self._fleet)
                parts[openmetrics_format] = plain
            return parts[openmetrics_format]

    def _fleet_gzip(self, openmetrics_format: bool):
        """A gzip compressor that has consumed the fleet part, and the bytes it produced.

        Each scrape copies the compressor and feeds it the live part, so the response is one
        gzip stream (not concatenated members, which some clients read only the first of)
        while the large fleet part is compressed once per snapshot.
        """
        parts = self._parts()
        key = ("gzip", openmetrics_format)
        plain = self._fleet_bytes(openmetrics_format)
        with self._lock:
            if key not in parts:
                comp = zlib.compressobj(6, zlib.DEFLATED, 31)
                head = comp.compress(plain) + comp.flush(zlib.Z_SYNC_FLUSH)
                parts[key] = (comp, head)
            return parts[key]

    def _parts(self) -> dict:
        version = self._version()
        with self._lock:
            if self._cache is None or self._cache[0] != version:
                self._cache = (version, {})
            return self._cache[1]

    def prerender(self) -> None:
        """Render what Prometheus will ask for (OpenMetrics, gzip) before the next scrape."""
        self._fleet_gzip(True)
        self._fleet_bytes(False)

    def render(self, accept: str = "", accept_encoding: str = "") -> tuple[bytes, str, bool]:
        """(body, content type, gzipped) for a scrape with these request headers."""
        use_om = "application/openmetrics-text" in accept
        if use_om:
            live = openmetrics.generate_latest(self._live)
            content_type = OPENMETRICS
        else:
            live = text_format.generate_latest(self._live)
            content_type = TEXT
        if "gzip" in accept_encoding:
            comp, head = self._fleet_gzip(use_om)
            with self._lock:
                comp = comp.copy()
            return head + comp.compress(live) + comp.flush(), content_type, True
        return self._fleet_bytes(use_om) + live, content_type, False
