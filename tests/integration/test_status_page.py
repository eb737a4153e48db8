"""Institution health end to end: sandbox → agent → Prometheus with the generated rules, and
the agent's /status page in a real headless Chromium.

On the sandbox's outage night, OpenFinanceInstitutionDownWhileDeclaredOnline fires for exactly
the Finicity institution that fails while the sandbox declares it online; the institution in
declared maintenance gets OpenFinanceInstitutionOutageDuringMaintenance instead of the outage
page. The page renders, its rows are the JSON's, the JSON agrees with /metrics, and banks the
sandbox shares between providers (same home-page domain) sit under one key. Expected values
come from GET /sandbox/state, never from numbers written here.
"""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.procs import wait_for
from tests.integration.prom import MonitoredSandbox, render_rules, scrape

pytestmark = pytest.mark.integration

DOWN_DECLARED_ONLINE = "OpenFinanceInstitutionDownWhileDeclaredOnline"
DURING_MAINTENANCE = "OpenFinanceInstitutionOutageDuringMaintenance"
OUTAGE = "OpenFinanceInstitutionOutage"
_PROVIDER = {"units": 120, "institutions": 8}
SCENARIO: dict[str, Any] = {"finicity": _PROVIDER, "mx": _PROVIDER, "rates": {"unknown": 0.0}}
SCREENSHOT = "status-page.png"

Key = tuple[str, str]


def _firing(stack: MonitoredSandbox, name: str) -> set[Key]:
    assert stack.prometheus is not None
    return {(a["labels"]["provider"], a["labels"]["institution_id"])
            for a in stack.prometheus.alerts()
            if a["labels"].get("alertname") == name and a["state"] == "firing"}


def _chromium(*args: str) -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    assert binary, "chromium is not installed (scripts/install-tools.sh installs it)"
    done = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Rows(HTMLParser):
    """The rendered table: (data-key, data-source, data-institution-id, data-state) per row."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, str, str, str]] = []
        self.routes: list[str] = []  # the "Route new links to" cell of each row
        self.points: list[int] = []  # the "Last 24 h" cell of each row: its points
        self.svgs: list[dict[str, str]] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.scripts += tag == "script"
        if tag == "tr" and "data-key" in a:
            self.rows.append((a["data-key"], a["data-source"], a["data-institution-id"],
                              a["data-state"]))
        if tag == "td" and "data-route" in a:
            self.routes.append(a["data-route"])
        if tag == "td" and "data-points" in a:
            self.points.append(int(a["data-points"]))
        if tag == "svg":
            self.svgs.append(a)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_declared_status_alerts_status_page_and_keys(tmp_path):
    rules = render_rules(tmp_path / "openfinance.e2e.rules.yml", short=True)
    stack = MonitoredSandbox(tmp_path, SCENARIO, interval=1, rule_files=[rules])
    try:
        _run(stack, tmp_path)
    finally:
        stack.stop()


def _run(stack: MonitoredSandbox, tmp_path: Path) -> None:
    sandbox, prom, agent = stack.sandbox, stack.prometheus, stack.agent
    assert sandbox is not None and prom is not None and agent is not None
    state = sandbox.state()
    outages = [o for o in state["outages"] if o["provider"] == "finicity"]
    online = {("finicity", o["institution_id"]) for o in outages
              if o.get("declared_status") == "online"}
    maintenance = {("finicity", o["institution_id"]) for o in outages
                   if o.get("declared_status") == "maintenance"}
    assert online and maintenance, f"the scenario needs both declared outages: {outages}"
    night = max(o["start_night"] for o in outages)
    assert night < min(o["end_night"] for o in outages)

    # Before the outages: nothing from institution health.
    prom.wait_for_series("institution_state:openfinance_health_state:info")
    stack.scraped_after_sweep()
    prom.wait_for_evaluations(2)
    assert not _firing(stack, DOWN_DECLARED_ONLINE) | _firing(stack, DURING_MAINTENANCE)

    # The outage nights: the alert names exactly the institution declared online.
    stack.advance(night - state["night"])
    try:
        wait_for(lambda: _firing(stack, DOWN_DECLARED_ONLINE) == online
                 and _firing(stack, DURING_MAINTENANCE) >= maintenance, 60,
                 what="the declared-status alerts", interval=0.5)
    except AssertionError:
        pytest.fail(f"expected {DOWN_DECLARED_ONLINE} for {online} and {DURING_MAINTENANCE} "
                    f"for {maintenance}\n{stack.diagnostics()}")
    prom.wait_for_evaluations(2)
    assert _firing(stack, DOWN_DECLARED_ONLINE) == online, stack.diagnostics()
    assert not _firing(stack, OUTAGE) & maintenance, "the maintenance institution paged"

    # The JSON agrees with /metrics.
    body = httpx.get(f"{agent.url}/api/v1/institutions", timeout=30).json()
    metrics = scrape(agent.url)
    accounts: dict[tuple[str, str], float] = {}
    for labels, value in metrics["openfinance_accounts"]:
        k = (labels["source"], labels["institution_id"])
        accounts[k] = accounts.get(k, 0) + value
    keys = {(lb["source"], lb["institution_id"]): lb["key"]
            for lb, _ in metrics["openfinance_institution_key_info"]}
    declared = {(lb["source"], lb["institution_id"]): lb["status"]
                for lb, _ in metrics["openfinance_institution_declared_status"]
                if lb["product"] == "institution"}
    entries = [(i["key"], p) for i in body["institutions"] for p in i["providers"]]
    assert {(p["source"], p["institution_id"]) for _, p in entries} == set(accounts)
    for key, p in entries:
        where = (p["source"], p["institution_id"])
        assert p["accounts"] == accounts[where], where
        if p["institution_id"] != "other":
            assert keys[where] == key, where
        status = (p["declared"] or {}).get("status")
        assert status == declared.get(where), where
    # The refresh lag per institution (read from the state database every 2 s here) counts
    # the same accounts as /metrics.
    def lag_matches() -> bool:
        body = httpx.get(f"{agent.url}/api/v1/institutions", timeout=30).json()
        samples = scrape(agent.url)
        totals: dict[tuple[str, str], float] = {}
        for labels, value in samples.get("openfinance_institution_refresh_accounts", []):
            k = (labels["source"], labels["institution_id"])
            totals[k] = totals.get(k, 0) + value
        lags = [p["refresh"] for i in body["institutions"] for p in i["providers"]]
        return (totals == accounts and all(r["scope"] == "institution" for r in lags)
                and all(sum(r["accounts"].values()) == accounts[(p["source"], p["institution_id"])]
                        for i in body["institutions"] for p in i["providers"]
                        for r in [p["refresh"]]))
    wait_for(lag_matches, 30, what="the refresh lag per institution", interval=0.5)

    states = {("finicity", p["institution_id"]): p["state"] for _, p in entries
              if p["provider"] == "finicity"}
    assert all(states[k] == "down" for k in online), states

    # Banks the sandbox shares between providers (same domain) have one key.
    domains: dict[str, set[str]] = {}
    for provider, info in state["fleet"].items():
        for inst in info["institutions"]:
            if inst.get("domain"):
                domains.setdefault(inst["domain"], set()).add(provider)
    shared = {d for d, ps in domains.items() if ps == {"finicity", "mx"}}
    assert shared, "the scenario shares no bank between providers"
    by_key = {i["key"]: {p["provider"] for p in i["providers"]} for i in body["institutions"]}
    for domain in shared:
        key = domain.removeprefix("www.")
        assert by_key.get(key) == {"finicity", "mx"}, (key, by_key)

    # The page in a real browser: it renders, its rows are the JSON's, names are text.
    url = f"{agent.url}/status"
    dom = _chromium("--dump-dom", url)
    parser = _Rows()
    parser.feed(dom)
    assert parser.scripts == 0
    assert parser.rows == [(k, p["source"], p["institution_id"], p["state"]) for k, p in entries]
    text = " ".join(parser.text)
    # The routing advice column: each row's share is the JSON's for its key and provider.
    assert "Route new links to" in text
    advice = {i["key"]: i["advice"] for i in httpx.get(
        f"{agent.url}/api/v1/routing", timeout=30).json()["institutions"]}
    assert parser.routes == [str(advice[k][p["provider"]]) if k in advice else ""
                             for k, p in entries]
    assert set(parser.routes) - {""}, "no advice shown"
    # One sparkline per row: the points of ?history=24h, drawn with a text alternative.
    history = {i["key"]: i["history"] for i in httpx.get(
        f"{agent.url}/api/v1/institutions", params={"history": "24h"}, timeout=30,
    ).json()["institutions"]}
    assert parser.points == [0 if k == "other" else len(history[k][p["provider"]])
                             for k, p in entries]
    assert len(parser.svgs) == sum(n > 0 for n in parser.points) > 0
    assert all(svg["role"] == "img" and svg["aria-label"] for svg in parser.svgs)
    assert "declared online, observed down" in text
    hostile = [inst["institution"] for info in state["fleet"].values()
               for inst in info["institutions"] if inst["hostile_name"]]
    assert any(name.split("\n")[0] in text for name in hostile), "hostile names not shown as text"
    shot = tmp_path / SCREENSHOT
    _chromium(f"--screenshot={shot}", "--window-size=1500,1100", "--hide-scrollbars", url)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
