"""HealthWiring: sources' institution lookups feed the directory; rows, routes, refreshers."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.health.config import HealthConfig
from exporter.health.wiring import HealthWiring
from exporter.metrics import build_metrics
from exporter.sources.institution import DeclaredStatus, Institution
from exporter.sources.payloads import PayloadReader
from exporter.tracker import Snapshot, SourceAggregate
from exporter.upstreams.finicity.payloads import FinicityInstitutionBody
from exporter.upstreams.mx.payloads import MxInstitutionBody
from exporter.web.server import create_app
from tests.unit.support import Recorder


class FakeSource:
    def __init__(self, name: str, provider: str, refresh: float = 900.0):
        self.name, self.provider = name, provider
        self.config = SimpleNamespace(institution_status_refresh=refresh)
        self.institution_seen = None
        self.looked_up: list[str] = []

    async def institution(self, institution_id: str) -> Institution | None:
        self.looked_up.append(institution_id)
        return Institution(home_url="https://chase.com",
                           declared=DeclaredStatus((("institution", "maintenance"),)))


SNAP = Snapshot(version=1, sources={
    "fin": SourceAggregate("fin", "finicity", accounts=(("4222", "Chase", "0", "ok", 3),)),
    "mx": SourceAggregate("mx", "mx", accounts=(("chase", "Chase", "CONNECTED", "ok", 2),)),
})


def _wiring(sources) -> HealthWiring:
    return HealthWiring(HealthConfig(), sources, lambda: SNAP, lambda: 1000.0)


def test_institution_lookups_feed_keys_and_declared_statuses():
    fin, mx = FakeSource("fin", "finicity"), FakeSource("mx", "mx")
    wiring = _wiring([fin, mx])
    problems = Recorder()
    read = PayloadReader("fin", problems, lambda: 1000.0)
    fin.institution_seen("4222", "Chase", read.body(FinicityInstitutionBody, {"institution": {
        "status": "online", "urlHomeApp": "https://www.chase.com", "productionStatus": 5}},
        "/institution").institution.typed())
    mx.institution_seen("chase", "Chase", read.body(
        MxInstitutionBody, {"institution": {"url": "https://chase.com"}},
        "/institutions").institution.typed())
    declared, keys, refresh = wiring.rows()
    assert refresh == [], "no refresh rows before the state was read"
    assert declared == [("fin", "finicity", "4222", "Chase", "institution", "online")]
    assert keys == [("fin", "finicity", "4222", "chase.com"), ("mx", "mx", "chase", "chase.com")]
    assert problems.invalid == ["invalid_declared_status"]
    (inst,) = wiring.report().institutions
    assert [p.provider for p in inst.providers] == ["finicity", "mx"]


async def test_refreshers_run_for_finicity_sources_with_a_cadence_only():
    fin, off, mx = FakeSource("fin", "finicity"), FakeSource("fin2", "finicity", 0), FakeSource(
        "mx", "mx")
    wiring = _wiring([fin, off, mx])
    assert [r.source for r in wiring.refreshers] == ["fin"]
    assert await wiring.refreshers[0].run() == 1
    assert fin.looked_up == ["4222"]
    assert wiring.directory.declared("fin", "4222").in_maintenance
    scheduler = AsyncIOScheduler(timezone="UTC")
    wiring.schedule(scheduler)
    assert [j.id for j in scheduler.get_jobs()] == ["institution-status:fin"]


async def test_the_metrics_listener_serves_the_health_routes_and_rows():
    wiring = _wiring([FakeSource("fin", "finicity")])
    metrics = build_metrics(lambda: SNAP, clock=lambda: 1000.0, institutions=lambda: wiring)
    app = create_app(metrics.exposition, lambda: True, "/metrics", wiring.routes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://t") as client:
        assert (await client.get("/api/v1/institutions")).json()["institutions"]
        assert "Institution status" in (await client.get("/status")).text
        assert 'href="/status"' in (await client.get("/")).text
        body = (await client.get("/metrics")).text
    assert 'openfinance_institution_key_info{institution_id="4222",key="name:chase"' in body


async def test_an_institution_that_turns_unhealthy_has_its_declared_status_read_at_once():
    def snapshot(version: int, ok: int, down: int) -> Snapshot:
        return Snapshot(version=version, sources={"fin": SourceAggregate("fin", "finicity", accounts=(
            ("4222", "Chase", "0", "ok", ok), ("4222", "Chase", "910", "institution", down),
            ("5555", "Wells", "0", "ok", 20),
            ("5555", "Wells", "103", "credentials", 30)))})  # user side: not unhealthy
    current = {"snap": snapshot(1, 20, 0)}
    fin, mx = FakeSource("fin", "finicity"), FakeSource("mx", "mx")
    wiring = HealthWiring(HealthConfig(), [fin, mx], lambda: current["snap"], lambda: 1000.0)

    async def published(source: str = "fin") -> None:
        reading = wiring.sweep_published(source)
        if reading is not None:
            await reading

    await published()
    await published("mx")  # no refresher for MX: nothing to read
    assert fin.looked_up == [] and mx.looked_up == []
    current["snap"] = snapshot(2, 4, 16)  # 4222 goes down
    await published()
    assert fin.looked_up == ["4222"]
    assert wiring.directory.declared("fin", "4222").in_maintenance
    await published()  # still down: read once per change of state
    assert fin.looked_up == ["4222"]
    current["snap"] = snapshot(3, 20, 0)
    await published()
    current["snap"] = snapshot(4, 10, 10)  # down again
    await published()
    assert fin.looked_up == ["4222", "4222"]
    await wiring.close()
