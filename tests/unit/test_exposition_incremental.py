"""The snapshot part of /metrics, kept per institution block, always equals a full render.

A real tracker (state on disk, folding on or off) and real institution health (directory,
refresh lag read from the state database) go through random sweeps, pushes, declared-status
and home-page changes, refresh-lag reads and routing advice; after each, every way of asking for /metrics
(text or OpenMetrics, plain or gzip) must give exactly what ``prometheus_client`` renders
from the collectors.
"""

from __future__ import annotations

import asyncio
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client import exposition as text_format
from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.openmetrics import exposition as openmetrics
from prometheus_client.registry import Collector

from exporter.health.config import HealthConfig
from exporter.health.directory import InstitutionFacts
from exporter.health.wiring import HealthWiring
from exporter.metrics import Metrics, blocks, build_metrics, gzipped
from exporter.metrics.lines import FamilyFormat, RegistryText
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.sources.institution import DeclaredStatus
from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import Snapshot, Tracker
from tests.unit.conftest import DAY, Clock

OM = "application/openmetrics-text; version=1.0.0"
PROVIDERS = {"fin": "finicity", "mx": "mx"}
CODES = {"fin": ["0", "0", "185", "103", "910", "NONE"],
         "mx": ["CONNECTED", "CONNECTED", "CHALLENGED", "DENIED", "FAILED"]}
NAMES = ["FinBank", 'Q"uote\\d\nBank', "Ünïcode & Söhne", "Bank 100%s", "A", "Zed Bank"]
HOMES = [None, "https://a.example.com", "https://www.b.example.com", "https://a.example.com/x"]
DECLARED = [None, DeclaredStatus((("institution", "online"),)),
            DeclaredStatus((("institution", "maintenance"), ("overall", "offline"),
                            ("transAgg", "online")))]


def full_render(metrics: Metrics, om: bool) -> bytes:
    """What the exposition served before it kept blocks: prometheus_client over the
    registries, snapshot part first."""
    if om:
        return (openmetrics.generate_latest(metrics.fleet)[: -len(b"# EOF\n")]
                + openmetrics.generate_latest(metrics.live))
    return text_format.generate_latest(metrics.fleet) + text_format.generate_latest(metrics.live)


def served(metrics: Metrics, om: bool, gzip: bool) -> bytes:
    body, _ctype, gzipped = metrics.exposition.render(OM if om else "", "gzip" if gzip else "")
    assert gzipped == gzip
    if gzip:  # one member: a single-stream decoder must read it all
        reader = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text = reader.decompress(body)
        assert reader.eof and not reader.unused_data
        return text
    return body


account = st.tuples(st.integers(0, 9), st.integers(0, 5), st.integers(0, 1), st.integers(0, 5))
"""(account, institution, which of its two names, code)"""
step = st.one_of(
    st.tuples(st.just("sweep"), st.sampled_from(["fin", "mx"]), st.lists(account, max_size=10),
              st.booleans()),
    st.tuples(st.just("facts"), st.sampled_from(["fin", "mx"]), st.integers(0, 5),
              st.integers(0, 1), st.integers(0, len(HOMES) - 1),
              st.integers(0, len(DECLARED) - 1)),
    st.tuples(st.just("ages")),
    st.tuples(st.just("advance"), st.integers(1, 9)),
    st.tuples(st.just("routing"), st.dictionaries(
        st.integers(0, 7), st.tuples(st.integers(0, 100), st.integers(0, len(NAMES) - 1)),
        max_size=6), st.booleans()),
)


class Routing:
    """The advice as /metrics reads it (the Advisor's two members)."""

    def __init__(self) -> None:
        self.version = 0
        self.by_key: dict[str, tuple] = {}

    def rows_by_key(self) -> dict[str, tuple]:
        return dict(sorted(self.by_key.items()))


def institution(source: str, inst: int, which: int) -> tuple[str, str]:
    return f"{source}{inst}", NAMES[(inst + 3 * which) % len(NAMES)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=8), fold=st.sampled_from([0, 0, 2]),
       prerender=st.booleans(), small=st.booleans())
def test_incremental_exposition_always_equals_a_full_render(steps, fold, prerender, small):
    """``small``: segments of a few institutions (or 300 bytes) and a 200-byte deflate
    dictionary, so that a handful of institutions spans many segments and pieces."""
    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            clock = Clock()
            path = Path(tmp) / "state.db"
            tracker = Tracker(StateStore(StateDatabase(path)), clock=clock, institution_min_accounts=fold)
            wiring = HealthWiring(HealthConfig(), [], lambda: tracker.snapshot, clock,
                                  tracker.store.database)
            routing = Routing()
            metrics = build_metrics(lambda: tracker.snapshot, clock=clock,
                                    institutions=lambda: wiring, routing=lambda: routing)
            for s in steps:
                if s[0] == "sweep":
                    _kind, source, accounts, complete = s
                    session = await tracker.begin(source, PROVIDERS[source])
                    codes = CODES[source]
                    await session.add([
                        AccountStatus(source, PROVIDERS[source], f"{source}-{key}",
                                      *institution(source, inst, which), codes[code % len(codes)],
                                      clock.now - 3600, clock.now - (code % 3) * DAY)
                        for key, inst, which, code in accounts])
                    await session.finish(SweepReport(complete=complete))
                elif s[0] == "facts":
                    _kind, source, inst, which, home, declared = s
                    inst_id, name = institution(source, inst, which)
                    wiring.directory.record(InstitutionFacts(
                        source, PROVIDERS[source], inst_id, name, HOMES[home],
                        DECLARED[declared], clock.now))
                elif s[0] == "ages":
                    assert await wiring.ages.run()
                elif s[0] == "routing":  # advice for some keys moved (or only re-evaluated)
                    _kind, advice, moved = s
                    for k, (share, name) in advice.items():
                        routing.by_key[f"bank{k}.com"] = (
                            (f"bank{k}.com", NAMES[name], "finicity", share),
                            (f"bank{k}.com", NAMES[name], "mx", 100 - share))
                    if advice and moved:
                        routing.by_key.pop(next(iter(sorted(routing.by_key))))
                    routing.version += 1
                else:
                    clock.advance(s[1] * 3600 * 7)
                if prerender:
                    metrics.exposition.prerender()
                for om in (False, True):
                    expected = full_render(metrics, om)
                    for gzip in (True, False):
                        assert served(metrics, om, gzip) == expected
            await tracker.close()

    with pytest.MonkeyPatch.context() as patch:
        if small:
            patch.setattr(blocks, "SEGMENT_KEYS", 3)
            patch.setattr(blocks, "SEGMENT_BYTES", 300)
            patch.setattr(gzipped, "WINDOW", 200)
        asyncio.run(run())


async def test_a_scrape_re_renders_only_the_blocks_of_the_institution_that_changed(
        harness, acct, monkeypatch):
    await harness.sweep([acct("a1", 0), acct("a2", 185),
                         acct("b1", 103, inst="5555", name="OtherBank")])
    calls: list[tuple] = []
    real = FamilyFormat.lines
    monkeypatch.setattr(FamilyFormat, "lines",
                        lambda self, rows: calls.append(rows) or real(self, rows))
    harness.exposition.render()
    assert {row[2] for rows in calls for row in rows if len(row) > 4} == {"4222", "5555"}
    calls.clear()
    harness.exposition.render("", "gzip")
    harness.exposition.render(OM, "gzip")
    assert calls == []
    await harness.sweep([acct("a1", 0), acct("a2", 0),
                         acct("b1", 103, inst="5555", name="OtherBank")])
    harness.exposition.render(OM, "gzip")
    assert calls and {row[2] for rows in calls for row in rows} == {"4222"}


LABEL = st.text(st.sampled_from('ab"\\\n%{}=,é '), max_size=6)
observation = st.one_of(
    st.tuples(st.just("request"), LABEL, LABEL, st.floats(0, 100)),
    st.tuples(st.just("fix_institution"), LABEL, LABEL, st.sampled_from(["requested", None])),
    st.tuples(st.just("sweep"), st.sampled_from(["success", "partial", "failed"]),
              st.floats(0, 1e9)),
    st.tuples(st.just("pending"), st.dictionaries(LABEL, st.integers(-5, 10**12), max_size=3)),
)


@settings(max_examples=60, deadline=None)
@given(observations=st.lists(observation, max_size=12))
def test_the_live_part_is_written_as_prometheus_client_writes_it(observations):
    clock = Clock()
    metrics = build_metrics(lambda: Snapshot(), clock=clock)
    agent = metrics.agent
    agent.source_added("fin", "finicity")
    for o in observations:
        if o[0] == "request":
            agent.request("fin", o[1], o[2], o[3])
        elif o[0] == "fix_institution":
            agent.fix_institution("fin", "finicity", "4222", o[1], o[2] or "185", o[3])
            agent.fix_institution("fin", "finicity", "4222", o[2], "185", None)
        elif o[0] == "sweep":
            agent.sweep_finished("fin", o[1], o[2], records=3, completed_at=o[2])
        else:
            agent.fix_pending(o[1])
    writer = RegistryText(metrics.live)
    for _ in range(2):  # the second time from the caches
        assert writer.render(False) == text_format.generate_latest(metrics.live)
        assert writer.render(True) == openmetrics.generate_latest(metrics.live)


class Unusual(Collector):
    """Families the fast path leaves to prometheus_client."""

    def collect(self):
        c = CounterMetricFamily("with_exemplar", "h", labels=["a"])
        c.add_metric(["x"], 1, exemplar=Exemplar({"trace_id": "1"}, 1.0))
        yield c
        g = GaugeMetricFamily("with_timestamp", "h", labels=["a"])
        g.add_metric(["y"], 2, timestamp=1234.5)
        yield g
        colon = GaugeMetricFamily("job:colon:ratio", "recorded-looking", labels=["a"])
        colon.add_metric(["z"], 0.5)
        yield colon
        info = InfoMetricFamily("build", 'h "quoted"\nhelp', value={"version": "1"})
        yield info
        gh = GaugeHistogramMetricFamily("ages", "h", buckets=[("1.0", 2), ("+Inf", 3)],
                                        gsum_value=4)
        yield gh
        zero = GaugeMetricFamily("signed_zero", "h", labels=["a"])
        zero.add_metric(["n"], -0.0)
        zero.add_metric(["p"], 0.0)
        yield zero


def test_unusual_families_are_written_by_prometheus_client_itself():
    registry = CollectorRegistry()
    registry.register(Unusual())
    writer = RegistryText(registry)
    assert writer.render(False) == text_format.generate_latest(registry)
    assert writer.render(True) == openmetrics.generate_latest(registry)


async def test_institution_health_that_is_not_there_yet_or_any_more_shows_nothing(tmp_path):
    clock = Clock()
    tracker = Tracker(StateStore(StateDatabase(tmp_path / "state.db")), clock=clock)
    wiring = HealthWiring(HealthConfig(), [], lambda: tracker.snapshot, clock,
                          tracker.store.database)
    current: dict[str, HealthWiring | None] = {"health": None}
    metrics = build_metrics(lambda: tracker.snapshot, clock=clock,
                            institutions=lambda: current["health"])
    session = await tracker.begin("fin", "finicity")
    await session.add([AccountStatus("fin", "finicity", "a1", "4222", "FinBank", "0",
                                     clock.now - 3600, clock.now - 3600)])
    await session.finish(SweepReport(complete=True))
    await wiring.ages.run()
    for health, shown in ((None, False), (wiring, True), (None, False)):
        current["health"] = health
        for om in (False, True):
            body = served(metrics, om, gzip=True)
            assert body == full_render(metrics, om)
            assert (b"openfinance_institution_key_info{" in body) is shown
            assert (b"openfinance_institution_refresh_accounts{" in body) is shown
    await tracker.close()
