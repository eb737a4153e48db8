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

import re
from collections.abc import Iterable

from prometheus_client import exposition as text_format
from prometheus_client.metrics_core import Metric
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


class Values:
    """Label values escaped and sample values printed as prometheus_client does, cached."""

    def __init__(self) -> None:
        self._escaped: dict[str, str] = {}
        self._printed: dict[float, str] = {}

    def label(self, value: str) -> str:
        hit = self._escaped.get(value)
        if hit is None:
            if len(self._escaped) >= _CACHE_LIMIT:
                self._escaped.clear()
            hit = self._escaped[value] = _escape(value) if (
                "\\" in value or "\n" in value or '"' in value) else value
        return hit

    def value(self, value: float) -> str:
        if value == 0:  # 0.0 and -0.0 are one dict key but two texts
            return floatToGoString(value)
        hit = self._printed.get(value)
        if hit is None:
            if len(self._printed) >= _CACHE_LIMIT:
                self._printed.clear()
            hit = self._printed[value] = floatToGoString(value)
        return hit


def _header(family: Metric, openmetrics_format: bool) -> bytes:
    """The ``# HELP``/``# TYPE`` (``# UNIT``) lines prometheus_client writes for a family."""
    empty = _One(Metric(family.name, family.documentation, family.type, family.unit))
    if openmetrics_format:
        return openmetrics.generate_latest(empty)[: -len(_EOF)]
    return text_format.generate_latest(empty)


class FamilyFormat:
    """The header and sample lines of ``openfinance_<short>``."""

    def __init__(self, short: str):
        s = spec(short)
        if not s.labels or s.type not in ("gauge", "counter"):
            raise ValueError(f"{s.name}: only labelled gauges and counters are rendered here")
        self.name = s.name
        sample = s.name + "_total" if s.type == "counter" else s.name
        self._order = sorted(range(len(s.labels)), key=lambda i: s.labels[i])
        self._template = (sample + "{" + ",".join(
            f'{s.labels[i]}="%s"' for i in self._order) + "} %s\n")
        empty = family(short)
        self.header = {False: _header(empty, False), True: _header(empty, True)}
        """format (OpenMetrics?) → the family's ``# HELP``/``# TYPE`` lines"""
        self._values = Values()

    def lines(self, rows: Iterable[tuple]) -> bytes:
        """The sample lines of ``rows`` (label values in catalogue order, then the value)."""
        template, order = self._template, self._order
        label, value = self._values.label, self._values.value
        return "".join([
            template % (*[label(row[i]) for i in order], value(row[-1])) for row in rows
        ]).encode("utf-8")


_SIMPLE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
"""a name both formats write as it is (OpenMetrics turns even ``:`` into ``_`` in samples)"""


class RegistryText:
    """A registry written as prometheus_client's ``generate_latest`` writes it, without its
    per-character escaping of every sample name: the same bytes, several times faster.

    A family with anything unusual (exemplars, timestamps, native histograms, names that
    need escaping, or, in the text format, samples that format moves to families of their
    own such as a gauge histogram's ``_gsum``) is written by prometheus_client itself.
    """

    def __init__(self, registry: Collector):
        self._registry = registry
        self._headers: dict[tuple[str, str, str, str, bool], bytes] = {}
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], str] = {}
        """(sample name, labels in their order) → ``name{sorted, escaped labels}``"""
        self._values = Values()

    def render(self, openmetrics_format: bool) -> bytes:
        out = []
        for metric in self._registry.collect():
            text = self._family(metric, openmetrics_format)
            if text is None:
                one = _One(metric)
                text = (openmetrics.generate_latest(one)[: -len(_EOF)] if openmetrics_format
                        else text_format.generate_latest(one))
            out.append(text)
        if openmetrics_format:
            out.append(_EOF)
        return b"".join(out)

    def _prefix(self, name: str, labels: dict[str, str]) -> str:
        """``name{labels}`` as both formats write it; "" when a name needs escaping."""
        if _SIMPLE.fullmatch(name) is None:
            return ""
        if not labels:
            return name
        pairs = sorted(labels.items())
        if not all(_SIMPLE.fullmatch(k) for k, _v in pairs):
            return ""
        label = self._values.label
        return name + "{" + ",".join([f'{k}="{label(v)}"' for k, v in pairs]) + "}"

    def _family(self, metric: Metric, openmetrics_format: bool) -> bytes | None:
        key = (metric.name, metric.documentation, metric.type, metric.unit, openmetrics_format)
        header = self._headers.get(key)
        if header is None:
            if len(self._headers) >= _CACHE_LIMIT:
                self._headers.clear()
            header = self._headers[key] = _header(metric, openmetrics_format)
        moved = () if openmetrics_format else tuple(
            metric.name + suffix for suffix in ("_created", "_gsum", "_gcount"))
        prefixes, value = self._prefixes, self._values.value
        lines = []
        for s in metric.samples:
            if (s.exemplar is not None or s.timestamp is not None or s.native_histogram
                    is not None or s.value is None or s.name in moved):
                return None
            sample = (s.name, tuple(s.labels.items()))
            prefix = prefixes.get(sample)
            if prefix is None:
                if len(prefixes) >= _CACHE_LIMIT:
                    prefixes.clear()
                prefix = prefixes[sample] = self._prefix(s.name, s.labels)
            if not prefix:
                return None
            lines.append(f"{prefix} {value(s.value)}\n")
        return header + "".join(lines).encode("utf-8")
