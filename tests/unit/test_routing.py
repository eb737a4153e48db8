"""Routing advice: the rule as a table (time injected), the advisor over health reports, the
UCP export, the configuration and the routes (a real Starlette app, no network)."""

from __future__ import annotations

from html.parser import HTMLParser

import httpx
import pytest
from starlette.applications import Starlette

from exporter.config import ConfigError, load_config
from exporter.health.directory import InstitutionDirectory, InstitutionFacts
from exporter.health.report import build_report
from exporter.health.routes import health_routes
from exporter.health.sides import Thresholds
from exporter.metrics import build_metrics
from exporter.routing.advice import (
    DEGRADED,
    DOWN,
    HEALTHY,
    UNKNOWN,
    Observed,
    Track,
    advise,
    observe,
    split,
)
from exporter.routing.advisor import Advisor
from exporter.routing.config import RoutingConfig, load_institution_ids
from exporter.routing.routes import routing_routes
from exporter.sources.institution import DeclaredStatus
from exporter.state.database import StateDatabase
from exporter.tracker import AgeHistogram, Snapshot, SourceAggregate

HOLD, RECOVER = 1800.0, 7200.0
BOTH = {"finicity": 1, "mx": 1}
H, G, D, U = (Observed(s) for s in (HEALTHY, DEGRADED, DOWN, UNKNOWN))
MAINT, OFFLINE = Observed(DOWN, "maintenance"), Observed(DOWN, "offline")


def _run(steps, weights=BOTH):
    """Feed ``[(t, {provider: Observed})]`` to :func:`advise`; the advice after each step."""
    tracks: dict[str, Track] = {}
    out = []
    for t, observed in steps:
        advice = advise(tracks, observed, t, weights, HOLD, RECOVER)
        tracks = advice.tracks
        out.append(advice)
    return out


def _fm(fin: Observed, mx: Observed) -> dict[str, Observed]:
    return {"finicity": fin, "mx": mx}


# (case, steps, weights, shares after the last step, rule)
TABLE = [
    ("both healthy: the default weights",
     [(0, _fm(H, H))], BOTH, {"finicity": 50, "mx": 50}, "default"),
    ("a first state applies at once: down at one, healthy at the other",
     [(0, _fm(D, H))], BOTH, {"finicity": 0, "mx": 100}, "away"),
    ("a new down state does not move the advice before the hold",
     [(0, _fm(H, H)), (10, _fm(D, H)), (10 + HOLD - 1, _fm(D, H))], BOTH,
     {"finicity": 50, "mx": 50}, "default"),
    ("...and moves it once it held for the hold",
     [(0, _fm(H, H)), (10, _fm(D, H)), (10 + HOLD, _fm(D, H))], BOTH,
     {"finicity": 0, "mx": 100}, "away"),
    ("declared maintenance counts as down, whatever the fleet shows",
     [(0, _fm(H, H)), (10, _fm(MAINT, H)), (10 + HOLD, _fm(MAINT, H))], BOTH,
     {"finicity": 0, "mx": 100}, "away"),
    ("declared offline counts as down",
     [(0, _fm(OFFLINE, H))], BOTH, {"finicity": 0, "mx": 100}, "away"),
    ("degraded gets nothing while another is healthy",
     [(0, _fm(H, H)), (5, _fm(H, G)), (5 + HOLD, _fm(H, G))], BOTH,
     {"finicity": 100, "mx": 0}, "away"),
    ("degraded at both: they share by the defaults",
     [(0, _fm(G, G))], BOTH, {"finicity": 50, "mx": 50}, "degraded_only"),
    ("degraded beats down when nothing is healthy",
     [(0, _fm(G, D))], BOTH, {"finicity": 100, "mx": 0}, "degraded_only"),
    ("down at every aggregator: the defaults",
     [(0, _fm(D, MAINT))], BOTH, {"finicity": 50, "mx": 50}, "all_down"),
    ("unknown (too few accounts) does not move the advice away from a healthy one",
     [(0, _fm(H, H)), (10, _fm(U, H)), (10 + 10 * HOLD, _fm(U, H))], BOTH,
     {"finicity": 50, "mx": 50}, "default"),
    ("unknown does not move the advice back to a down one",
     [(0, _fm(D, H)), (10, _fm(U, H)), (10 + 10 * RECOVER, _fm(U, H))], BOTH,
     {"finicity": 0, "mx": 100}, "away"),
    ("an aggregator never seen with a state is presumed healthy",
     [(0, _fm(D, U))], BOTH, {"finicity": 0, "mx": 100}, "away"),
    ("a recovered aggregator does not get links back after the hold...",
     [(0, _fm(D, H)), (10, _fm(H, H)), (10 + HOLD, _fm(H, H))], BOTH,
     {"finicity": 0, "mx": 100}, "away"),
    ("...only after the recover hold",
     [(0, _fm(D, H)), (10, _fm(H, H)), (10 + RECOVER, _fm(H, H))], BOTH,
     {"finicity": 50, "mx": 50}, "default"),
    ("a worse change keeps its start when it worsens further (degraded, then down)",
     [(0, _fm(H, H)), (10, _fm(G, H)), (20, _fm(D, H)), (10 + HOLD, _fm(D, H))], BOTH,
     {"finicity": 0, "mx": 100}, "away"),
    ("a flap back to the current state restarts the hold",
     [(0, _fm(H, H)), (10, _fm(D, H)), (20, _fm(H, H)), (30, _fm(D, H)),
      (10 + HOLD, _fm(D, H))], BOTH, {"finicity": 50, "mx": 50}, "default"),
    ("one aggregator only: all links to it, even when down",
     [(0, {"finicity": H}), (10, {"finicity": D}), (10 + HOLD, {"finicity": D})],
     {"finicity": 1}, {"finicity": 100}, "all_down"),
    ("the partner's weights split the healthy ones",
     [(0, _fm(H, H))], {"finicity": 70, "mx": 30}, {"finicity": 70, "mx": 30}, "default"),
    ("a zero-weight aggregator takes all links when the other is down",
     [(0, _fm(D, H))], {"finicity": 100, "mx": 0}, {"finicity": 0, "mx": 100}, "away"),
]


@pytest.mark.parametrize(("steps", "weights", "shares", "rule"),
                         [c[1:] for c in TABLE], ids=[c[0] for c in TABLE])
def test_the_advice_table(steps, weights, shares, rule):
    advice = _run(steps, weights)[-1]
    assert advice.shares == shares
    assert advice.rule == rule
    assert sum(advice.shares.values()) == 100


def test_a_pending_change_is_visible_with_when_it_applies():
    advice = _run([(0, _fm(H, H)), (10, _fm(MAINT, H))])[-1]
    fin = advice.tracks["finicity"]
    assert (fin.state, fin.pending, fin.pending_declared) == (HEALTHY, DOWN, "maintenance")
    assert fin.due(HOLD, RECOVER) == 10 + HOLD


def test_shares_are_integers_summing_to_100_by_largest_remainder():
    assert split({"finicity": 1, "mx": 2}, ["finicity", "mx"]) == {"finicity": 33, "mx": 67}
    assert split({"finicity": 1, "mx": 1}, ["mx"]) == {"finicity": 0, "mx": 100}
    assert split({"finicity": 0, "mx": 0}, ["finicity", "mx"]) == {"finicity": 50, "mx": 50}


def test_an_agent_without_sources_advises_nothing():
    advisor = Advisor(RoutingConfig(), [])
    assert advisor.defaults == {}
    assert advisor.ucp(advisor.update(build_report(Snapshot(), InstitutionDirectory(), NOW))) == {
        "institutionAggregatorVolumeMap": {}, "defaultAggregatorVolume": {}}


def test_the_demo_holds_follow_the_sandbox_night(tmp_path):
    from exporter.demo import demo_routing, sandbox_settings

    settings = sandbox_settings("http://127.0.0.1:1", state_path=tmp_path / "s.db", interval=5,
                                listen_address="127.0.0.1:0", routing=demo_routing(20))
    assert (settings.routing.hold, settings.routing.recover_hold) == (20, 40)
    assert demo_routing(0) == {"hold": 30.0, "recover_hold": 60.0}, "manual nights: 30 s"


def test_observe_uses_the_health_thresholds_and_the_declared_status():
    t = Thresholds(min_accounts=10)
    assert observe(9, 9, [], t) == Observed(UNKNOWN)
    assert observe(10, 10, ["online"], t) == Observed(HEALTHY)
    assert observe(8, 10, [None], t) == Observed(DEGRADED)
    assert observe(2, 10, [], t) == Observed(DOWN)
    assert observe(0, 0, [None, "maintenance"], t) == Observed(DOWN, "maintenance")


# --- the advisor over health reports --------------------------------------------------------

NOW = 1_800_000_000.0


def _snapshot(fin_ok: int, fin_bad: int, mx_ok: int = 50, version: int = 1) -> Snapshot:
    success = AgeHistogram.of({(NOW - 3600) // 60: 40})
    return Snapshot(version=version, sources={
        "fin": SourceAggregate("fin", "finicity", accounts=(
            ("4222", "Chase", "905", "institution", fin_bad), ("4222", "Chase", "0", "ok", fin_ok),
            ("other", "other", "0", "ok", 30)), success=success),
        "mx": SourceAggregate("mx", "mx", accounts=(
            ("chase", "Chase", "CONNECTED", "ok", mx_ok),), success=success),
    })


def _directory(declared: str = "online") -> InstitutionDirectory:
    directory = InstitutionDirectory()
    directory.record(InstitutionFacts("fin", "finicity", "4222", "Chase", "https://www.chase.com",
                                      DeclaredStatus((("institution", declared),)), NOW))
    directory.record(InstitutionFacts("mx", "mx", "chase", "Chase", "https://chase.com"))
    return directory


class _Changes:
    def __init__(self) -> None:
        self.providers: tuple[str, ...] = ()
        self.counted: list[tuple[str, str]] = []

    def routing_providers(self, providers):
        self.providers = providers

    def routing_changed(self, provider, direction):
        self.counted.append((provider, direction))


def _advisor(observer=None, **config) -> Advisor:
    return Advisor(RoutingConfig(**config), ["finicity", "mx"], observer)


def test_the_advisor_moves_away_after_the_hold_and_back_after_the_recover_hold():
    changes = _Changes()
    advisor = _advisor(changes, hold="30m", recover_hold="2h")
    assert changes.providers == ("finicity", "mx")
    directory = _directory()

    def at(t, snap):
        return {a.key: a for a in advisor.update(build_report(snap, directory, NOW + t))}

    healthy, down = _snapshot(40, 0), _snapshot(5, 35)
    assert at(0, healthy)["chase.com"].shares == {"finicity": 50, "mx": 50}
    assert "other" not in at(1, healthy), "the folded institutions get no advice"
    assert at(60, down)["chase.com"].shares == {"finicity": 50, "mx": 50}
    moved = at(60 + 1800, down)["chase.com"]
    assert moved.shares == {"finicity": 0, "mx": 100} and moved.since == NOW + 1860
    assert moved.tracks["finicity"].seen_since == NOW + 60
    assert "routed away from finicity" in moved.reason
    assert at(4000, down)["chase.com"].since == NOW + 1860, "since: when the shares changed"
    assert changes.counted == [("finicity", "away")]
    assert at(5000, healthy)["chase.com"].shares == {"finicity": 0, "mx": 100}
    assert at(5000 + 1800, healthy)["chase.com"].shares == {"finicity": 0, "mx": 100}
    assert at(5000 + 7200, healthy)["chase.com"].shares == {"finicity": 50, "mx": 50}
    assert changes.counted == [("finicity", "away"), ("finicity", "back")]


def test_an_older_report_evaluated_late_changes_nothing():
    advisor = _advisor(hold=0)
    directory = _directory()
    advisor.update(build_report(_snapshot(5, 35), directory, NOW + 10))
    advisor.update(build_report(_snapshot(40, 0), directory, NOW))
    assert advisor.by_key()["chase.com"].shares == {"finicity": 0, "mx": 100}


def test_ucp_export_is_keyed_by_our_key_or_by_the_partners_ids(tmp_path):
    directory = _directory("maintenance")
    report = build_report(_snapshot(40, 0), directory, NOW)
    advisor = _advisor()
    assert advisor.ucp(advisor.update(report)) == {
        "institutionAggregatorVolumeMap": {"chase.com": {"finicity": 0, "mx": 100}},
        "defaultAggregatorVolume": {"finicity": 50, "mx": 50}}
    ids = tmp_path / "ids.yml"
    ids.write_text("finicity: {4222: partner-chase}\n")
    mapped = _advisor(institution_ids_file=ids, default_weights={"finicity": 3, "mx": 1})
    assert mapped.ucp(mapped.update(report)) == {
        "institutionAggregatorVolumeMap": {"partner-chase": {"finicity": 0, "mx": 100}},
        "defaultAggregatorVolume": {"finicity": 75, "mx": 25}}
    ids.write_text("keys: {chase.com: by-key}\nmx: {chase: by-mx}\n")
    by_key = _advisor(institution_ids_file=ids)
    assert list(by_key.ucp(by_key.update(report))["institutionAggregatorVolumeMap"]) == ["by-key"]
    ids.write_text("mx: {elsewhere: x}\n")
    unmapped = _advisor(institution_ids_file=ids)
    assert unmapped.ucp(unmapped.update(report))["institutionAggregatorVolumeMap"] == {}


# --- configuration --------------------------------------------------------------------------


def test_routing_config_defaults_and_durations():
    cfg = RoutingConfig()
    assert (cfg.hold, cfg.recover_hold) == (1800.0, 7200.0)
    assert cfg.weights(["mx", "finicity"]) == {"finicity": 1, "mx": 1}
    cfg = RoutingConfig(hold="90s", recover_hold="1h", default_weights={"finicity": 2})
    assert (cfg.hold, cfg.recover_hold) == (90.0, 3600.0)
    assert cfg.weights(["finicity", "mx"]) == {"finicity": 2, "mx": 0}
    assert cfg.weights(["mx"]) == {"mx": 1}, "no positive weight among the sources: equal"


@pytest.mark.parametrize(("routing", "problem"), [
    ({"default_weights": {"plaid": 1}}, "routing.default_weights: unknown provider plaid"),
    ({"default_weights": {"finicity": 0, "mx": 0}}, "at least one must be positive"),
    ({"default_weights": {"mx": -1, "finicity": 2}}, "must not be negative"),
    ({"hold": "soon"}, "routing.hold: expected a duration"),
    ({"holdd": "1m"}, "routing.holdd: Extra inputs are not permitted"),
    ({"institution_ids_file": "/nonexistent/ids.yml"}, "routing.institution_ids_file: "
     "/nonexistent/ids.yml"),
])
def test_a_bad_routing_section_is_a_clear_error(tmp_path, routing, problem):
    import yaml

    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump({"routing": routing}))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert any(problem in p for p in exc.value.problems), exc.value.problems


def test_a_malformed_ids_file_names_the_bad_entry(tmp_path):
    ids = tmp_path / "ids.yml"
    ids.write_text("finicity: {4222: [not, a, string]}\n")
    with pytest.raises(ValueError, match=r"finicity\.4222"):
        load_institution_ids(ids)
    ids.write_text("plaid: {x: y}\n")
    with pytest.raises(ValueError, match="plaid"):
        load_institution_ids(ids)


# --- routes and metrics ---------------------------------------------------------------------


def _app(advisor: Advisor, snap: Snapshot, directory: InstitutionDirectory) -> httpx.AsyncClient:
    def report():
        return build_report(snap, directory, NOW)

    app = Starlette(routes=[*health_routes(report, advisor.update),
                            *routing_routes(advisor, report)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_the_routing_api_answers_json_and_ucp():
    client = _app(_advisor(), _snapshot(5, 35), _directory())
    body = (await client.get("/api/v1/routing")).json()
    assert body["generated_at"].endswith("Z") and body["default"] == {"finicity": 50, "mx": 50}
    [chase] = body["institutions"]
    assert chase["key"] == "chase.com" and chase["name"] == "Chase"
    assert chase["advice"] == {"finicity": 0, "mx": 100}
    assert chase["since"] == body["generated_at"]
    assert chase["providers"]["finicity"]["state"] == "down"
    assert "finicity: down" in chase["reason"]
    ucp = (await client.get("/api/v1/routing", params={"format": "ucp"})).json()
    assert ucp["institutionAggregatorVolumeMap"] == {"chase.com": {"finicity": 0, "mx": 100}}
    bad = await client.get("/api/v1/routing", params={"format": "xml"})
    assert bad.status_code == 400 and "json, ucp" in bad.json()["error"]


class _Routes(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.routes: list[tuple[str, str]] = []
        self._source = ""
        self._in_th = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._in_th = tag == "th"
        if tag == "tr" and "data-source" in a:
            self._source = a["data-source"]
        if tag == "td" and "data-route" in a:
            self.routes.append((self._source, a["data-route"]))

    def handle_data(self, data):
        if self._in_th:
            self.headers.append(data)
            self._in_th = False


async def test_the_status_page_shows_where_to_route_new_links():
    page = (await _app(_advisor(), _snapshot(5, 35), _directory()).get("/status")).text
    parser = _Routes()
    parser.feed(page)
    assert "Route new links to" in parser.headers
    assert parser.routes == [("fin", "0"), ("mx", "100"), ("fin", "")]
    assert 'href="/api/v1/routing?format=ucp"' in page


def test_routing_metrics_follow_the_advice():
    advisor: Advisor | None = None
    metrics = build_metrics(lambda: _snapshot(5, 35), clock=lambda: NOW,
                            routing=lambda: advisor)
    advisor = Advisor(RoutingConfig(hold=0), ["finicity", "mx"], metrics.agent)
    changes = "openfinance_routing_changes_total"
    assert metrics.value(changes, {"provider": "mx", "direction": "back"}) == 0
    directory = _directory()
    advisor.update(build_report(_snapshot(40, 0), directory, NOW))
    advisor.update(build_report(_snapshot(5, 35), directory, NOW + 1))
    share = {"key": "chase.com", "institution": "Chase"}
    assert metrics.value("openfinance_routing_share", {**share, "provider": "mx"}) == 100
    assert metrics.value("openfinance_routing_share", {**share, "provider": "finicity"}) == 0
    assert metrics.value(changes, {"provider": "finicity", "direction": "away"}) == 1
    assert metrics.value(changes, {"provider": "mx", "direction": "back"}) == 0


# --- a day of history on /status ------------------------------------------------------------


def test_history_points_sum_sources_per_key_and_provider_at_the_quarter_hour():
    from exporter.health.history import points_of

    report = build_report(_snapshot(5, 35), _directory(), NOW + 100)
    points = points_of(report)
    assert set(points) == {("chase.com", "finicity"), ("chase.com", "mx")}, "folded left out"
    fin = points[("chase.com", "finicity")]
    assert fin.ts == NOW // 900 * 900 and fin.accounts == 40
    assert (fin.ok, fin.institution, fin.aggregator, fin.state) == (0.125, 0.875, 0.0, "down")


def test_the_history_store_keeps_48_hours_one_point_per_quarter_hour(tmp_path):
    from exporter.health.history import KEEP, HistoryStore, Point

    store = HistoryStore(StateDatabase(tmp_path / "state.db"))
    pair = ("chase.com", "mx")
    store.record({pair: Point(NOW - KEEP - 900, 10, 1.0, 0.0, 0.0, "healthy")}, NOW - KEEP)
    store.record({pair: Point(NOW, 10, 1.0, 0.0, 0.0, "healthy")}, NOW)
    store.record({pair: Point(NOW, 12, 0.5, 0.5, 0.0, "degraded")}, NOW)  # same quarter hour
    assert store.read(0) == {pair: [Point(NOW, 12, 0.5, 0.5, 0.0, "degraded")]}
    store.close()
    assert HistoryStore(StateDatabase(tmp_path / "state.db")).read(NOW) == {
        pair: [Point(NOW, 12, 0.5, 0.5, 0.0, "degraded")]}, "kept in the state database"


async def test_a_quarter_hour_keeps_the_last_state_seen_in_it(tmp_path):
    from exporter.health.history import HistoryStore, InstitutionHistory

    now = {"t": NOW}
    snap = {"s": Snapshot(version=1, sources={"mx": _snapshot(40, 0).sources["mx"]})}
    directory = _directory()
    history = InstitutionHistory(HistoryStore(StateDatabase(tmp_path / "state.db")),
                                 lambda: build_report(snap["s"], directory, now["t"]),
                                 lambda: now["t"])
    assert await history.run()  # MX swept first
    snap["s"] = _snapshot(40, 0)
    now["t"] += 60
    assert await history.run()  # then Finicity, healthy
    snap["s"] = _snapshot(5, 35)
    now["t"] += 60
    assert await history.run()  # then down, in the same quarter hour
    now["t"] += 900
    assert await history.run()
    points = await history.read(86400)
    assert [p.state for p in points[("chase.com", "finicity")]] == ["down", "down"]
    assert len(points[("chase.com", "mx")]) == 2
    assert not await InstitutionHistory(history.store, lambda: build_report(
        Snapshot(), directory, NOW), lambda: NOW).run(), "nothing to write"


def _history_app(tmp_path) -> httpx.AsyncClient:
    from exporter.health.history import HistoryStore, InstitutionHistory

    snap, directory = _snapshot(5, 35), _directory()

    def report():
        return build_report(snap, directory, NOW)

    history = InstitutionHistory(HistoryStore(StateDatabase(tmp_path / "state.db")), report, lambda: NOW)
    history.store.record({("chase.com", "finicity"): _point(NOW - 3600, 1.0, "healthy")}, NOW)
    history.store.record({("chase.com", "finicity"): _point(NOW, 0.125, "down")}, NOW)
    app = Starlette(routes=health_routes(report, _advisor().update, history.read))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _point(ts, ok, state):
    from exporter.health.history import Point

    return Point(ts, 40, ok, 1 - ok, 0.0, state)


async def test_the_institutions_api_returns_the_history_asked_for(tmp_path):
    client = _history_app(tmp_path)
    plain = (await client.get("/api/v1/institutions")).json()
    assert "history" not in plain["institutions"][0]
    body = (await client.get("/api/v1/institutions", params={"history": "24h"})).json()
    chase = next(i for i in body["institutions"] if i["key"] == "chase.com")
    assert [(p["ok"], p["state"]) for p in chase["history"]["finicity"]] == [
        (1.0, "healthy"), (0.125, "down")]
    assert chase["history"]["mx"] == []
    short = (await client.get("/api/v1/institutions", params={"history": "30m"})).json()
    assert len(next(i for i in short["institutions"]
                    if i["key"] == "chase.com")["history"]["finicity"]) == 1
    for bad in ("3d", "0s", "soon"):
        answer = await client.get("/api/v1/institutions", params={"history": bad})
        assert answer.status_code == 400 and "48h" in answer.json()["error"], bad


class _Sparks(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self.svgs: list[dict[str, str]] = []
        self.headers: list[str] = []
        self._th = False

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self._th = tag == "th" and a.get("scope") == "col"
        if tag == "td" and "data-points" in a:
            self.cells.append(a["data-points"])
        if tag == "svg":
            self.svgs.append(a)

    def handle_data(self, data):
        if self._th:
            self.headers.append(data)
            self._th = False


async def test_the_status_page_draws_one_sparkline_per_row_with_a_text_alternative(tmp_path):
    page = (await _history_app(tmp_path).get("/status")).text
    parser = _Sparks()
    parser.feed(page)
    assert parser.headers[3:6] == ["State", "Last 24 h", "Route new links to"]
    assert parser.cells == ["2", "0", "0"], "finicity, mx (no points yet), folded"
    [svg] = parser.svgs
    assert svg["role"] == "img"
    assert "now 12.5 % (down)" in svg["aria-label"] and "lowest 12.5 %" in svg["aria-label"]
    assert "<polyline" in page and "no history yet" in page
    assert "http" not in page.split("<svg", 1)[1].split("</svg>")[0].replace(
        "http://www.w3.org/2000/svg", ""), "no external assets"


# --- the advice across a restart ------------------------------------------------------------


async def test_a_restart_keeps_the_advice_and_a_hold_under_way(tmp_path):
    from exporter.routing.store import RoutingStore

    directory = _directory()
    healthy, down = _snapshot(40, 0), _snapshot(5, 35)
    first = _advisor(hold="30m", recover_hold="2h")
    first.update(build_report(healthy, directory, NOW))
    first.update(build_report(down, directory, NOW + 60))  # down seen: the hold starts
    store = RoutingStore(StateDatabase(tmp_path / "state.db"))
    assert await first.save(store)
    assert first.changes() == ({}, set()), "saved: nothing left to write"
    store.close()

    second = _advisor(hold="30m", recover_hold="2h")
    assert await second.load(RoutingStore(StateDatabase(tmp_path / "state.db"))) == 1
    after = {a.key: a for a in second.update(build_report(down, directory, NOW + 120))}
    chase = after["chase.com"]
    assert chase.shares == {"finicity": 50, "mx": 50} and chase.since == NOW, \
        "the hold goes on (a fresh advisor would take the first state at once)"
    assert chase.tracks["finicity"].pending_since == NOW + 60
    moved = {a.key: a for a in second.update(build_report(down, directory, NOW + 1860))}
    assert moved["chase.com"].shares == {"finicity": 0, "mx": 100}


async def test_after_a_restart_a_recovery_not_yet_held_does_not_move_the_advice_back(tmp_path):
    from exporter.routing.store import RoutingStore

    directory = _directory()
    first = _advisor()
    first.update(build_report(_snapshot(5, 35), directory, NOW))
    store = RoutingStore(StateDatabase(tmp_path / "state.db"))
    await first.save(store)
    second = _advisor()
    await second.load(store)
    again = second.update(build_report(_snapshot(40, 0), directory, NOW + 60))
    assert again[0].shares == {"finicity": 0, "mx": 100}, "back only after recover_hold"


async def test_unreadable_rows_are_skipped_and_gone_institutions_deleted(tmp_path):
    from exporter.routing.store import RoutingStore

    store = RoutingStore(StateDatabase(tmp_path / "state.db"))
    advisor = _advisor()
    directory = _directory()
    advisor.update(build_report(_snapshot(40, 0), directory, NOW))
    await advisor.save(store)
    with store.transaction() as db:
        db.execute("INSERT INTO routing_advice VALUES ('broken.example', '{not json')")
    kept, bad = store.load()
    assert set(kept) == {"chase.com"} and bad == 1
    advisor.update(build_report(Snapshot(version=2), directory, NOW + 1))
    await advisor.save(store)
    assert set(store.load()[0]) == set()


async def test_a_failed_save_is_retried_with_the_next_one(tmp_path):
    import sqlite3

    from exporter.routing.store import RoutingStore

    class Refusing(RoutingStore):
        refuse = True

        def save(self, upserts, deletes):
            if self.refuse:
                raise sqlite3.OperationalError("attempt to write a readonly database")
            super().save(upserts, deletes)

    store = Refusing(StateDatabase(tmp_path / "state.db"))
    advisor = _advisor()
    advisor.update(build_report(_snapshot(40, 0), _directory(), NOW))
    assert not await advisor.save(store)
    store.refuse = False
    assert await advisor.save(store)
    assert set(store.load()[0]) == {"chase.com"}
