from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics.catalog import METRICS, render_markdown
from tests.unit.conftest import Harness

DOCS = Path(__file__).resolve().parents[2] / "docs/metrics.md"


async def _fleet(h: Harness, acct) -> None:
    h.metrics.source_added("fin", "finicity")
    h.metrics.request("fin", "/aggregation/v1/customers", "200", 0.1)
    await h.sweep([acct("a1", 0), acct("a2", 185), acct("a3", 910, name='Q"uote\\d\nBank')])


def test_docs_metrics_md_matches_the_code():
    assert DOCS.read_text() == render_markdown()


def test_every_catalogued_metric_is_described_by_the_exporter(harness):
    described = set()
    for registry in (harness.fleet, harness.live):
        for collector in list(registry._collector_to_names):
            for family in (collector.describe() if hasattr(collector, "describe") else []):
                described.add(family.name)
    assert described == {m.name for m in METRICS}


def test_snapshot_metrics_come_from_collectors_and_the_rest_from_instruments(harness):
    from exporter.metrics.collectors import (
        AgeCollector,
        ConsentCollector,
        FleetCollector,
        InstitutionHealthCollector,
        RoutingCollector,
    )

    collectors = (FleetCollector(None, []), AgeCollector(None, None),
                  InstitutionHealthCollector(None), RoutingCollector(None),
                  ConsentCollector(None, None))
    from_collectors = {f.name for c in collectors for f in c.describe()}
    assert from_collectors == {m.name for m in METRICS if m.from_snapshot}


async def test_text_exposition_parses_and_passes_promtool(harness, acct, tmp_path):
    await _fleet(harness, acct)
    body, ctype, gzipped = harness.exposition.render("text/plain", "")
    assert ctype.startswith("text/plain") and not gzipped
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert "openfinance_accounts" in names and "openfinance_build_info" in names
    lint = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert lint.returncode == 0, lint.stderr.decode() + lint.stdout.decode()


async def test_openmetrics_and_gzip_are_served_as_one_document(harness, acct):
    await _fleet(harness, acct)
    body, ctype, gzipped = harness.exposition.render(
        "application/openmetrics-text; version=1.0.0", "gzip")
    assert gzipped and ctype.startswith("application/openmetrics-text")
    # one gzip member: a single-stream decoder (as in httpx) must see the whole document
    text = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(body).decode()
    assert text.count("# EOF") == 1 and text.endswith("# EOF\n")
    assert 'openfinance_accounts{category="mfa",code="185"' in text


async def test_fleet_bytes_are_rendered_once_per_snapshot(harness, acct, monkeypatch):
    await _fleet(harness, acct)
    calls = []
    from exporter.metrics.lines import FamilyFormat

    real = FamilyFormat.lines
    monkeypatch.setattr(FamilyFormat, "lines",
                        lambda self, rows: calls.append(self.name) or real(self, rows))
    harness.exposition.render()
    first = len(calls)
    assert "openfinance_accounts" in calls
    for _ in range(2):
        harness.exposition.render()
    assert len(calls) == first
    await harness.sweep([acct("a1", 0)])
    harness.exposition.render()
    assert len(calls) > first


async def test_no_account_or_customer_id_appears_in_labels(harness, acct):
    await harness.sweep([acct("ACCT-5011648377", 185), acct("ACCT-99", 0)])
    body, _c, _g = harness.exposition.render()
    assert b"ACCT-" not in body
