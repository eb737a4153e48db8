"""Collectors over the tracker's snapshot: they read memory only, never do I/O.

:class:`FleetCollector` and :class:`InstitutionHealthCollector` yield what changes only when a
snapshot is published or institution health changes; /metrics serves their text kept per
institution block (:mod:`exporter.metrics.snapshot_text`, byte-identical to rendering them),
and they stay the reference for tests and tools. :class:`AgeCollector` yields the age
histograms, whose ages grow with the clock (rendered on every scrape).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from exporter.metrics.catalog import AGE_BUCKETS, spec
from exporter.status_codes import Catalog
from exporter.tracker import CONSENT_WINDOWS, AgeHistogram, Snapshot

_FAMILIES = {"gauge": GaugeMetricFamily, "counter": CounterMetricFamily,
             "gaugehistogram": GaugeHistogramMetricFamily}


def family(short: str) -> Metric:
    """An empty metric family for the catalogued ``openfinance_<short>``."""
    s = spec(short)
    return _FAMILIES[s.type](s.name, s.help, labels=s.labels)


class CatalogCollector(Collector):
    """A collector of families of the metrics catalogue, listed by short name in ``NAMES``;
    ``describe()`` yields them empty, so registering it never triggers ``collect()``."""

    NAMES: tuple[str, ...] = ()

    def describe(self) -> Iterator[Metric]:
        return (family(short) for short in self.NAMES)

    def families(self) -> tuple[Metric, ...]:
        """A fresh, empty family per name of ``NAMES``, in that order."""
        return tuple(family(short) for short in self.NAMES)


class FleetCollector(CatalogCollector):
    """Fleet state and the state-store size from the current snapshot.

    ``openfinance_accounts{source="finicity-prod",provider="finicity",institution_id="4222",
    institution="FinBank",code="185",category="mfa"} 12.0``
    """

    NAMES = ("accounts", "fixable_accounts", "otp_suspected_accounts", "status_transitions",
             "status_code_info", "state_accounts")

    def __init__(self, snapshot: Callable[[], Snapshot], catalog: Catalog):
        self._snapshot = snapshot
        self._catalog = catalog

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        accounts, fixable, otp, transitions, info, state = self.families()
        for agg in snap.sources.values():
            base = (agg.source, agg.provider)
            for inst_id, inst, code, category, n in agg.accounts:
                accounts.add_metric((*base, inst_id, inst, code, category), n)
            for inst_id, inst, code, n in agg.fixable:
                fixable.add_metric((*base, inst_id, inst, code), n)
            for inst_id, inst, n in agg.otp_suspected:
                otp.add_metric((*base, inst_id, inst), n)
            for inst_id, inst, frm, to, n in agg.transitions:
                transitions.add_metric((*base, inst_id, inst, frm, to), n)
            state.add_metric((agg.source,), agg.state_accounts)
        for e in self._catalog:
            info.add_metric((e.provider, e.code, e.name, e.category, str(e.fixable).lower()), 1)
        yield from (accounts, fixable, otp, transitions, info, state)


class AgeCollector(CatalogCollector):
    """Gauge histograms of broken-account age and last-success age, as of now.

    ``openfinance_broken_account_age_seconds_bucket{source="mx-prod",provider="mx",
    category="institution",le="86400.0"} 31.0``
    """

    NAMES = ("broken_account_age_seconds", "account_last_success_age_seconds")

    def __init__(self, snapshot: Callable[[], Snapshot], clock: Callable[[], float]):
        self._snapshot = snapshot
        self._clock = clock

    @staticmethod
    def _buckets(ages: AgeHistogram, now: float, extra_inf: int = 0):
        """Cumulative counts of ages ≤ each bound, and the sum of ages."""
        out = [(floatToGoString(b), ages.since(now - b)) for b in AGE_BUCKETS]
        out.append(("+Inf", ages.total + extra_inf))
        return out, ages.total * now - ages.time_sum

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        broken, success = self.families()
        for agg in self._snapshot().sources.values():
            for category, ages in sorted(agg.broken_since.items()):
                buckets, s = self._buckets(ages, now)
                broken.add_metric([agg.source, agg.provider, category], buckets, s)
            buckets, s = self._buckets(agg.success, now, agg.never_succeeded)
            success.add_metric([agg.source, agg.provider], buckets, s)
        yield broken
        yield success


class ConsentCollector(CatalogCollector):
    """Accounts whose consent ends within each window from now (the windows move with the
    clock, the ends only with sweeps: counted at scrape time from per-day counts, a few
    steps per institution).

    ``openfinance_consent_expiring_accounts{source="finicity-prod",provider="finicity",
    institution_id="4222",institution="FinBank",within="7d"} 31.0``
    """

    NAMES = ("consent_expiring_accounts",)

    def __init__(self, snapshot: Callable[[], Snapshot], clock: Callable[[], float]):
        self._snapshot = snapshot
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self._clock()
        expiring = family(self.NAMES[0])
        for agg in self._snapshot().sources.values():
            for inst_id, inst, horizon in agg.consent:
                for within, seconds in CONSENT_WINDOWS:
                    expiring.add_metric((agg.source, agg.provider, inst_id, inst, within),
                                        horizon.expiring(now, seconds))
        yield expiring


Rows = Callable[[], tuple[Iterable[tuple[str, ...]], Iterable[tuple[str, ...]], Iterable[tuple]]]


class InstitutionHealthCollector(CatalogCollector):
    """Institution health (``exporter.health``): declared statuses, institution keys and the
    refresh lag per institution.

    ``openfinance_institution_declared_status{source="finicity-prod",provider="finicity",
    institution_id="4222",institution="Chase",product="institution",status="online"} 1.0``

    ``rows()`` gives (declared rows, key rows, refresh rows), computed in memory; a refresh
    row ends with its value (accounts). /metrics serves the same rows per institution block
    (:mod:`exporter.metrics.snapshot_text`), re-rendered when institution health changes: a
    declared status re-read between two sweeps shows at the next scrape.
    """

    NAMES = ("institution_declared_status", "institution_key_info",
             "institution_refresh_accounts")

    def __init__(self, rows: Rows):
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        declared, keys, refresh = self.families()
        declared_rows, key_rows, refresh_rows = self._rows()
        for row in declared_rows:
            declared.add_metric(row, 1)
        for row in key_rows:
            keys.add_metric(row, 1)
        for *labels, value in refresh_rows:
            refresh.add_metric(labels, value)
        yield declared
        yield keys
        yield refresh


class RoutingCollector(CatalogCollector):
    """The routing advice (``exporter.routing``) as last evaluated: per institution key and
    aggregator, the share of new links.

    ``openfinance_routing_share{key="chase.com",institution="Chase",provider="mx"} 100.0``

    ``rows()`` gives (key, institution, provider, share) from memory.
    """

    NAMES = ("routing_share",)

    def __init__(self, rows: Callable[[], Iterable[tuple[str, str, str, int]]]):
        self._rows = rows

    def collect(self) -> Iterator[Metric]:
        share = family("routing_share")
        for *labels, value in self._rows():
            share.add_metric(labels, value)
        yield share
