"""Sample lines of one catalogued metric family, written exactly as ``prometheus_client`` writes
them, so that the snapshot part can be rendered per institution and stay byte-identical.

Both formats (text 0.0.4 and OpenMetrics) write a sample the same way: the sample name
(``_total`` added for a counter), the labels sorted by name with their values escaped
(backslash, newline, double quote), then the value as Go prints a float; only the family's
``# HELP``/``# TYPE`` lines differ, and those are taken from ``prometheus_client`` itself.
A row is the label values in the catalogue's label order followed by the value:

``("fin", "finicity", "4222", "FinBank", "185", "mfa", 12)`` →
``openfinance_accounts{category="mfa",code="185",institution="FinBank",institution_id="4222",
provider="finicity",source="fin"} 12.0``
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.metrics.catalog import spec
from exporter.metrics.collectors import family

_EOF = b"# EOF\n"
_CACHE_LIMIT = 200_000


class _One(Collector):
    def __init__(self, family):
        self._family = family

    def collect(self):
        yield self._family


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class FamilyFormat:
    """The header and sample lines of ``openfinance_<short>``."""

    def __init__(self, short: str):
        s = spec(short)
        if not s.labels or s.type not in ("gauge", "counter"):
            raise ValueError(f"{s.name}: only labelled gauges and counters are rendered here")
        self.name = s.name
        self.width = len(s.labels)
        sample = s.name + "_total" if s.type == "counter" else s.name
        self._order = sorted(range(len(s.labels)), key=lambda i: s.labels[i])
        self._template = (sample + "{" + ",".join(
            f'{s.labels[i]}="%s"' for i in self._order) + "} %s\n")
        empty = _One(family(short))
        om = openmetrics.generate_latest(empty)
        self.header = {False: text_format.generate_latest(empty),
                       True: om[: -len(_EOF)] if om.endswith(_EOF) else om}
        """format (OpenMetrics?) → the family's ``# HELP``/``# TYPE`` lines"""
        self._escaped: dict[str, str] = {}
        self._values: dict[float, str] = {}

    def _label(self, value: str) -> str:
        hit = self._escaped.get(value)
        if hit is None:
            if len(self._escaped) >= _CACHE_LIMIT:
                self._escaped.clear()
            hit = self._escaped[value] = _escape(value) if (
                "\\" in value or "\n" in value or '"' in value) else value
        return hit

    def _value(self, value: float) -> str:
        hit = self._values.get(value)
        if hit is None:
            if len(self._values) >= _CACHE_LIMIT:
                self._values.clear()
            hit = self._values[value] = floatToGoString(value)
        return hit

    def lines(self, rows: Iterable[tuple]) -> bytes:
        """The sample lines of ``rows`` (label values in catalogue order, then the value)."""
        template, order, label, value = self._template, self._order, self._label, self._value
        return "".join([
            template % (*[label(row[i]) for i in order], value(row[-1])) for row in rows
        ]).encode("utf-8")
