"""``openfinance-exporter demo`` itself, as a newcomer runs it (on free ports, nights advanced
through the sandbox's control API instead of a timer, sweeps an hour apart).

The banner names the URLs; the sandbox's webhooks reach the agent's listener; fix requests
go to the sandbox's users, who fix some logins a night later through the agent's redirect
link, and the agent counts those episodes ``fixed`` from the users' ``done`` webhooks.
"""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.integration.procs import EXPORTER, Proc, free_port, wait_for

pytestmark = pytest.mark.integration


def value(metrics: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


@pytest.fixture
def demo(tmp_path):
    ports = {name: free_port() for name in ("agent", "sandbox", "hooks")}
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump({"finicity": {"units": 200}, "mx": {"units": 120}}))
    proc = Proc("demo", [
        *EXPORTER, "demo", "--web.listen-address", f"127.0.0.1:{ports['agent']}",
        "--sandbox.listen-address", f"127.0.0.1:{ports['sandbox']}",
        "--webhooks.listen-address", f"127.0.0.1:{ports['hooks']}",
        "--sandbox.scenario", str(scenario), "--sandbox.night-seconds", "0",
        "--sweep.interval", "3600", "--sandbox.fix-share", "0.8",
        "--state.path", str(tmp_path / "state.db")], tmp_path)
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    try:
        wait_for(lambda: "Stop with Ctrl-C" in proc.log(), 60, "the demo's banner")
        yield proc, urls
    finally:
        assert proc.stop() == 0, proc.log()[-3000:]


def test_the_demo_fills_the_repair_funnel_over_sandbox_nights(demo):
    proc, urls = demo
    banner = proc.log()
    for url in (f"{urls['agent']}/metrics", f"{urls['agent']}/status",
                f"{urls['hooks']}/webhooks/finicity-sandbox", f"{urls['sandbox']}/sandbox/state"):
        assert url in banner, url
    metrics = lambda: httpx.get(f"{urls['agent']}/metrics", timeout=30).text  # noqa: E731
    sandbox = urls["sandbox"]

    def swept() -> bool:
        text = metrics()
        return all(value(text, "openfinance_sweeps_total", source=s, result="success") >= 1
                   for s in ("finicity-sandbox", "mx-sandbox"))
    wait_for(swept, 120, "the first sweeps")

    # Night 1: logins break, the sandbox pushes, the agent sends fix requests to its users.
    httpx.post(f"{sandbox}/sandbox/advance", timeout=30)
    wait_for(lambda: value(metrics(), "openfinance_fix_requests_total", result="delivered") > 0
             and value(metrics(), "openfinance_fix_requests_pending") == 0,
             60, "fix requests delivered after night 1")
    text = metrics()
    assert value(text, "openfinance_webhook_events_total", result="accepted") > 0
    assert value(text, "openfinance_sweeps_total", result="success") == 2, "push, not sweeps"
    received = httpx.get(f"{sandbox}/sandbox/partner/fix-requests", timeout=30).json()
    assert received["counts"]["accepted"] == value(text, "openfinance_fix_requests_total",
                                                   result="delivered")
    assert received["counts"].get("bad_signature", 0) == 0, "the demo's secret matches"

    # Night 2 (and 3): users act on their requests; their done/member webhooks close episodes.
    for night in (2, 3):
        httpx.post(f"{sandbox}/sandbox/advance", timeout=30)

        def users_done() -> bool:
            got = httpx.get(f"{sandbox}/sandbox/partner/fix-requests", timeout=30).json()
            due = [r for r in got["requests"]
                   if r["due_night"] is not None and r["due_night"] <= night]  # noqa: B023
            return bool(due) and all(r["result"] and "in_progress" not in r["result"]
                                     for r in due)
        wait_for(users_done, 60, f"the sandbox's users to act on night {night}")
    users = httpx.get(f"{sandbox}/sandbox/partner/fix-requests", timeout=30).json()
    wait_for(lambda: value(metrics(), "openfinance_fix_outcomes_total", outcome="fixed")
             >= users["results"]["fixed"], 30, "the users' fixes counted")
    text = metrics()
    print("demo funnel:", {k: value(text, "openfinance_fix_requests_total", result=k)
                           for k in ("delivered", "held", "dead")},
          "fixed:", value(text, "openfinance_fix_outcomes_total", outcome="fixed"),
          "users:", users["results"])
    assert value(text, "openfinance_fix_requests_total", result="held") == 0
    assert value(text, "openfinance_fix_resolution_seconds_count") >= users["results"]["fixed"]
    assert value(text, "openfinance_sweeps_total", result="success") == 2
    assert users["results"]["fixed"] > 0
    # A user may click after the login healed by itself: the agent's link says so (410).
    errors = {r["result"].get("error") for r in users["requests"] if r["result"]}
    assert errors <= {None, "HTTP 410 instead of a redirect to a repair page"}, errors
