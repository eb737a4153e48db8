"""Routing advice end to end: the real agent sweeping the sandbox, nights advanced by hand.

The sandbox's largest bank goes into declared maintenance at Finicity while MX, which has the
same bank (same home-page domain), stays healthy: after ``routing.hold`` the advice sends all
new links to MX, and after the maintenance ends and ``routing.recover_hold`` has passed, the
default split returns. The bank in an outage at both aggregators keeps the defaults. The
UCP export uses the partner's id from ``routing.institution_ids_file``, /metrics agrees, and
/status in a real headless Chromium shows the advice column. Which banks fail when comes
from GET /sandbox/state, never from numbers written here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.procs import AgentProc, Sandbox, agent_config, wait_for
from tests.integration.test_status_page import _chromium

pytestmark = pytest.mark.integration

_PROVIDER = {"units": 120, "institutions": 8}
SCENARIO: dict[str, Any] = {"finicity": _PROVIDER, "mx": _PROVIDER, "rates": {"unknown": 0.0}}
HOLD, RECOVER_HOLD = 3.0, 5.0
SOURCES = ("finicity-sandbox", "mx-sandbox")
DEFAULTS = {"finicity": 50, "mx": 50}
PARTNER_ID = "partner-bank-1"


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class _Routes(HTMLParser):
    """(data-key, data-source, data-route) of every row, and the column headers."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, str]] = []
        self.headers: list[str] = []
        self.sparks: list[tuple[str, str, str]] = []  # (key, source, points) per row
        self.svgs: list[dict[str, str]] = []
        self._row: dict[str, str] = {}
        self._th = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self._th = tag == "th" and a.get("scope") == "col"
        if tag == "tr" and "data-key" in a:
            self._row = a
        if tag == "td" and "data-route" in a:
            self.rows.append((self._row["data-key"], self._row["data-source"], a["data-route"]))
        if tag == "td" and "data-points" in a:
            self.sparks.append((self._row["data-key"], self._row["data-source"],
                                a["data-points"]))
        if tag == "svg":
            self.svgs.append(a)

    def handle_data(self, data: str) -> None:
        if self._th:
            self.headers.append(data)
            self._th = False


def tmp_path_of(agent: AgentProc) -> Path:
    """The test's directory (where the agent's log is)."""
    return agent.log_path.parent


def _key_of(state: dict[str, Any], provider: str, institution_id: str) -> str:
    inst = next(i for i in state["fleet"][provider]["institutions"]
                if i["institution_id"] == institution_id)
    return inst["domain"].removeprefix("www.")


def test_advice_leaves_a_bank_down_at_one_aggregator_and_returns_after_recovery(tmp_path: Path):
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    sandbox = Sandbox(tmp_path, scenario)
    agent: AgentProc | None = None
    try:
        state = sandbox.state()
        outages = state["outages"]
        maint = next(o for o in outages if o["provider"] == "finicity"
                     and o.get("declared_status") == "maintenance")
        both = next(o for o in outages if o["provider"] == "finicity"
                    and o.get("declared_status") == "online")
        key = _key_of(state, "finicity", maint["institution_id"])
        both_key = _key_of(state, "finicity", both["institution_id"])
        mx_down = {_key_of(state, "mx", o["institution_id"]) for o in outages
                   if o["provider"] == "mx"}
        mx_keys = {i["domain"].removeprefix("www.") for i in state["fleet"]["mx"]["institutions"]}
        assert key in mx_keys and key not in mx_down, "MX must have the bank, and healthy"
        assert both_key in mx_down, "the outage bank must fail at both aggregators"

        ids = tmp_path / "ids.yml"
        ids.write_text(yaml.safe_dump({"finicity": {maint["institution_id"]: PARTNER_ID}}))
        config = agent_config(tmp_path / "agent.yml", sandbox.url, tmp_path / "state.db",
                              interval=1)
        doc = yaml.safe_load(config.read_text())
        doc["routing"] = {"hold": f"{HOLD:g}s", "recover_hold": f"{RECOVER_HOLD:g}s",
                          "institution_ids_file": str(ids)}
        config.write_text(yaml.safe_dump(doc))
        agent = AgentProc(tmp_path, config)

        def restart() -> AgentProc:
            nonlocal agent
            assert agent is not None and agent.stop() == 0, agent.log()[-3000:]
            agent = AgentProc(tmp_path, config, name="agent-restarted")
            return agent

        _run(sandbox, agent, maint, key, both_key, restart)
    except BaseException:
        for proc in (agent, sandbox):
            if proc is not None:
                print(f"--- {proc.name} log ---\n{proc.log()[-4000:]}")
        raise
    finally:
        for proc in (agent, sandbox):
            if proc is not None:
                proc.stop()


def _run(sandbox: Sandbox, agent: AgentProc, maint: dict, key: str, both_key: str,
         restart: Callable[[], AgentProc]) -> None:
    def routing(**params: str) -> dict[str, Any]:
        return httpx.get(f"{agent.url}/api/v1/routing", params=params, timeout=30).json()

    def entry(k: str) -> dict[str, Any]:
        return {i["key"]: i for i in routing()["institutions"]}[k]  # KeyError: not yet

    def advance_to(night: int) -> None:
        """Move one night at a time, each seen by a sweep of both sources."""
        while sandbox.state()["night"] < night:
            sandbox.advance(1)
            agent.next_sweeps(SOURCES)

    # Before the maintenance: the defaults.
    wait_for(lambda: entry(key)["advice"] == DEFAULTS, 60, what="the first advice")
    assert routing()["default"] == DEFAULTS

    # The maintenance nights: after the hold, all new links to MX.
    advance_to(maint["start_night"])
    wait_for(lambda: entry(key)["advice"] == {"finicity": 0, "mx": 100}, 60,
             what=f"the advice for {key} to move to MX", interval=0.25)
    moved = entry(key)
    fin = moved["providers"]["finicity"]
    assert (fin["state"], fin["declared"]) == ("down", "maintenance"), moved
    assert moved["providers"]["mx"]["state"] == "healthy", moved
    # The advice moved only after the state held (timestamps are to the second).
    assert _seconds(fin["since"]) - _seconds(fin["seen_since"]) >= HOLD - 1, fin
    assert "routed away from finicity" in moved["reason"]
    ucp = routing(format="ucp")
    assert ucp["institutionAggregatorVolumeMap"] == {PARTNER_ID: {"finicity": 0, "mx": 100}}
    assert ucp["defaultAggregatorVolume"] == DEFAULTS
    share = {s["provider"]: v for s, v in agent.scrape()["openfinance_routing_share"]
             if s["key"] == key}
    assert share == {"finicity": 0, "mx": 100}
    assert agent.value("openfinance_routing_changes_total", provider="finicity",
                       direction="away") >= 1

    # Down at both aggregators: no better choice than the defaults.
    wait_for(lambda: entry(both_key)["rule"] == "all_down", 60,
             what=f"{both_key} down at both", interval=0.25)
    assert entry(both_key)["advice"] == DEFAULTS

    # The page in a real browser: the column, and the advice on the bank's two rows.
    dom = _chromium("--dump-dom", f"{agent.url}/status")
    page = _Routes()
    page.feed(dom)
    assert "Route new links to" in page.headers
    rows = {(source, route) for k, source, route in page.rows if k == key}
    assert rows == {("finicity-sandbox", "0"), ("mx-sandbox", "100")}, page.rows
    # A day of history: one sparkline per row (the folded row has none), the same points
    # as ?history=24h, each with its text alternative.
    assert "Last 24 h" in page.headers
    assert len(page.sparks) == len(page.rows)
    history = httpx.get(f"{agent.url}/api/v1/institutions", params={"history": "24h"},
                        timeout=30).json()
    provider = {"finicity-sandbox": "finicity", "mx-sandbox": "mx"}
    points = {i["key"]: i["history"] for i in history["institutions"]}
    for k, source, n in page.sparks:
        expected = len(points[k].get(provider[source], [])) if k != "other" else 0
        assert int(n) == expected, (k, source, n, expected)
    assert all(len(points[key][p]) >= 1 for p in ("finicity", "mx")), points[key]
    assert len(page.svgs) == sum(int(n) > 0 for _, _, n in page.sparks) > 0
    assert all(svg["role"] == "img" and "OK share" in svg["aria-label"] for svg in page.svgs)
    shot = tmp_path_of(agent) / "status-routing.png"
    _chromium(f"--screenshot={shot}", "--window-size=1600,1100", "--hide-scrollbars",
              f"{agent.url}/status")
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")

    # A restart keeps the advice and since when it holds (saved in the state database).
    before = entry(key)
    agent = restart()
    wait_for(lambda: entry(key)["advice"] == before["advice"], 30,
             what="the advice after a restart")
    assert entry(key)["since"] == before["since"], (entry(key), before)

    # After the maintenance and the recover hold: the defaults again.
    advance_to(maint["end_night"])
    wait_for(lambda: entry(key)["advice"] == DEFAULTS, 60,
             what=f"the advice for {key} to return", interval=0.25)
    fin = entry(key)["providers"]["finicity"]
    assert fin["state"] == "healthy", fin
    assert _seconds(fin["since"]) - _seconds(fin["seen_since"]) >= RECOVER_HOLD - 1, fin
    assert agent.value("openfinance_routing_changes_total", provider="finicity",
                       direction="back") >= 1
