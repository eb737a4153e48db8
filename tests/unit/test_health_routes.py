"""GET /api/v1/institutions and GET /status over a real Starlette app (no network)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
from starlette.applications import Starlette

from exporter.health.directory import InstitutionDirectory, InstitutionFacts
from exporter.health.report import build_report
from exporter.health.routes import health_routes
from exporter.sources.institution import DeclaredStatus
from exporter.tracker import AgeHistogram, Snapshot, SourceAggregate

NOW = 1_800_000_000.0
HOSTILE = '<script>alert("x")</script> & "Bank"'


def _client() -> httpx.AsyncClient:
    directory = InstitutionDirectory()
    directory.record(InstitutionFacts(
        "fin", "finicity", "4222", "Chase", "https://www.chase.com",
        DeclaredStatus((("institution", "online"), ("overall", "online"))), NOW))
    directory.record(InstitutionFacts("mx", "mx", "chase", "Chase", "https://chase.com"))
    success = AgeHistogram.of({(NOW - 3600) // 60: 40})
    snap = Snapshot(version=3, sources={
        "fin": SourceAggregate("fin", "finicity", accounts=(
            ("4222", "Chase", "905", "institution", 30), ("4222", "Chase", "0", "ok", 10),
            ("666", HOSTILE, "0", "ok", 12)), success=success),
        "mx": SourceAggregate("mx", "mx", accounts=(
            ("chase", "Chase", "CONNECTED", "ok", 50),), success=success),
    })
    app = Starlette(routes=health_routes(lambda: build_report(snap, directory, NOW)))
    return _http(app)


def _http(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


class _Rows(HTMLParser):
    """(data-key, data-source, data-state) of every table row, and every <script> tag."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, str]] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag == "tr" and "data-key" in a:
            self.rows.append((a["data-key"], a["data-source"], a["data-state"]))


async def test_the_json_groups_both_aggregators_of_a_bank_under_one_key():
    body = (await _client().get("/api/v1/institutions")).json()
    first = body["institutions"][0]
    assert first["key"] == "chase.com" and first["state"] == "down"
    assert [(p["provider"], p["state"]) for p in first["providers"]] == [
        ("finicity", "down"), ("mx", "healthy")]
    fin = first["providers"][0]
    assert fin["breakdown"] == {"ok": 0.25, "institution": 0.75, "aggregator": 0.0}
    assert fin["declared"] == {"status": "online",
                               "products": {"institution": "online", "overall": "online"}}
    assert fin["refresh"]["state"] == "normal" and fin["refresh"]["scope"] == "source"
    assert body["thresholds"]["down_below"] == 0.5
    assert body["generated_at"].endswith("Z")


async def test_the_page_shows_the_same_rows_as_the_json():
    client = _client()
    body = (await client.get("/api/v1/institutions")).json()
    expected = [(i["key"], p["source"], p["state"]) for i in body["institutions"]
                for p in i["providers"]]
    page = await client.get("/status")
    assert page.headers["content-type"].startswith("text/html")
    parser = _Rows()
    parser.feed(page.text)
    assert parser.rows == expected


async def test_the_page_escapes_hostile_institution_names_and_runs_no_script():
    page = (await _client().get("/status")).text
    parser = _Rows()
    parser.feed(page)
    assert parser.scripts == 0
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &quot;Bank&quot;" in page


async def test_the_page_flags_declared_online_while_observed_down():
    page = (await _client().get("/status")).text
    assert re.search(r'data-declared="online">online.*declared online, observed down', page)
    assert "not published" in page  # MX declares nothing


async def test_an_empty_snapshot_renders_an_empty_page():
    app = Starlette(routes=health_routes(
        lambda: build_report(Snapshot(), InstitutionDirectory(), NOW)))
    client = _http(app)
    assert (await client.get("/api/v1/institutions")).json()["institutions"] == []
    assert "No accounts yet." in (await client.get("/status")).text
