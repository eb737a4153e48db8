"""The snapshot part of /metrics, kept per institution block, always equals a full render.

A real tracker (state on disk, folding on or off) and real institution health (directory,
refresh lag read from the state database) go through random sweeps, pushes, declared-status
and home-page changes and refresh-lag reads; after each, every way of asking for /metrics
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
from prometheus_client import exposition as text_format
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.health.config import HealthConfig
from exporter.health.declared import DeclaredStatus
from exporter.health.directory import InstitutionFacts
from exporter.health.wiring import HealthWiring
from exporter.metrics import Metrics, blocks, build_metrics, gzipped
from exporter.metrics.lines import FamilyFormat
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state import StateStore
from exporter.tracker import Tracker
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


class Problems:
    def invalid_record(self, source: str, reason: str) -> None:
        pass


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
)


def institution(source: str, inst: int, which: int) -> tuple[str, str]:
    return f"{source}{inst}", NAMES[(inst + 3 * which) % len(NAMES)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=8), fold=st.sampled_from([0, 0, 2]),
       prerender=st.booleans(), small=st.booleans())
def test_incremental_exposition_always_equals_a_full_render(steps, fold, prerender, small):
    """``small``: segments of about two institutions and a 200-byte deflate dictionary, so
    that a handful of institutions spans many segments and pieces."""
    async def run() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            clock = Clock()
            path = Path(tmp) / "state.db"
            tracker = Tracker(StateStore(path), clock=clock, institution_min_accounts=fold)
            wiring = HealthWiring(HealthConfig(), [], lambda: tracker.snapshot, clock,
                                  Problems(), str(path))
            metrics = build_metrics(lambda: tracker.snapshot, clock=clock,
                                    institutions=lambda: wiring)
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
            patch.setattr(blocks, "SEGMENT_KEYS", 2)
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
