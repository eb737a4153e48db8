"""The real agent against the real sandbox over HTTP: /metrics equals the sandbox's truth.

Also: state survives SIGKILL (streaks, broken-since, transition counts), SIGTERM exits
cleanly, and the agent never calls a refresh endpoint.
"""

from __future__ import annotations

import signal
from collections import defaultdict

import pytest
import yaml

from exporter.tracker import clean_label
from tests.integration.procs import AgentProc, Sandbox, agent_config

pytestmark = pytest.mark.integration

SOURCES = {"finicity": "finicity-sandbox", "mx": "mx-sandbox"}
SMALL = {"finicity": {"units": 250}, "mx": {"units": 150}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("agent-sandbox")


def _scenario(workdir):
    path = workdir / "scenario.yml"
    path.write_text(yaml.safe_dump(SMALL))
    return path


def fleet_from_metrics(samples: dict) -> tuple[dict, dict]:
    accounts: dict = defaultdict(float)
    for labels, value in samples.get("openfinance_accounts", []):
        key = (labels["provider"], labels["institution_id"], labels["institution"],
               labels["code"], labels["category"])
        accounts[key] += value
    otp: dict = defaultdict(float)
    for labels, value in samples.get("openfinance_otp_suspected_accounts", []):
        otp[(labels["provider"], labels["institution_id"])] += value
    return dict(accounts), {k: v for k, v in otp.items() if v}


def fleet_from_truth(truth: dict) -> tuple[dict, dict]:
    # The agent turns control characters in display names into spaces (clean_label).
    accounts = {(r["provider"], r["institution_id"],
                 clean_label(r["institution"], r["institution_id"]), r["code"],
                 r["category"]): float(r["accounts"]) for r in truth["accounts"] if r["accounts"]}
    otp: dict = defaultdict(float)
    for r in truth["otp_suspects"]:
        otp[(r["provider"], r["institution_id"])] += r["accounts"]
    return accounts, {k: v for k, v in otp.items() if v}


def assert_matches_truth(agent: AgentProc, sandbox: Sandbox) -> None:
    got_accounts, got_otp = fleet_from_metrics(agent.scrape())
    want_accounts, want_otp = fleet_from_truth(sandbox.truth())
    missing = {k: v for k, v in want_accounts.items() if got_accounts.get(k) != v}
    extra = {k: v for k, v in got_accounts.items() if k not in want_accounts}
    assert not missing and not extra, f"differs from truth: want {missing}, unexpected {extra}"
    assert got_otp == want_otp


@pytest.fixture(scope="module")
def live(workdir):
    sandbox = Sandbox(workdir, _scenario(workdir))
    config = agent_config(workdir / "agent.yml", sandbox.url, workdir / "state.db", interval=1)
    agent = AgentProc(workdir, config)
    yield sandbox, agent
    agent.stop()
    sandbox.stop()


def test_metrics_equal_the_sandbox_truth_night_by_night(live):
    sandbox, agent = live
    state = sandbox.state()
    outage_night = min(o["start_night"] for o in state["outages"])
    last = max(outage_night, min(o["start_night"] for o in state["otp"]) + 3)
    agent.next_sweeps(SOURCES.values())
    assert_matches_truth(agent, sandbox)
    for _night in range(last):
        sandbox.advance(1)
        agent.next_sweeps(SOURCES.values())
        assert_matches_truth(agent, sandbox)
    # the outage is visible for exactly the outage institutions, in category institution
    got, suspects = fleet_from_metrics(agent.scrape())
    outage = {(o["provider"], o["institution_id"]) for o in sandbox.state()["outages"]
              if o["active"]}
    assert outage
    for provider, inst in outage:
        down = sum(v for k, v in got.items() if k[:2] == (provider, inst)
                   and k[4] == "institution")
        total = sum(v for k, v in got.items() if k[:2] == (provider, inst))
        assert down / total > 0.5
    assert suspects, "three nights of 185 must make OTP suspects"


def test_extra_polls_within_a_night_change_nothing(live):
    sandbox, agent = live
    before = fleet_from_metrics(agent.scrape())
    agent.next_sweeps(SOURCES.values())
    agent.next_sweeps(SOURCES.values())
    assert fleet_from_metrics(agent.scrape()) == before
    assert_matches_truth(agent, sandbox)


def test_the_agent_never_calls_a_refresh_endpoint(live):
    sandbox, _agent = live
    assert sandbox.state()["refresh_calls"] == 0


def test_state_carries_on_after_sigkill(tmp_path):
    sandbox = Sandbox(tmp_path, _scenario(tmp_path))
    agents = []
    try:
        config = agent_config(tmp_path / "agent.yml", sandbox.url, tmp_path / "state.db",
                              interval=3600)
        otp_start = min(o["start_night"] for o in sandbox.state()["otp"])
        sandbox.advance(otp_start)
        transitions_before = None
        for night in range(2):  # one fresh process per night, each killed with SIGKILL
            agent = AgentProc(tmp_path, config, name=f"agent-{night}")
            agents.append(agent)
            agent.wait_sweeps({name: 1 for name in SOURCES.values()})
            samples = agent.scrape()
            transitions = sum(v for _l, v in samples.get(
                "openfinance_status_transitions_total", []))
            if transitions_before is not None:
                assert transitions >= transitions_before
            transitions_before = transitions
            assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
            sandbox.advance(1)
        # Two MFA nights seen by two processes, both killed: the state is intact.
        check = agent_config(tmp_path / "check.yml", sandbox.url, tmp_path / "state.db",
                             interval=3600, run_at_start=False)
        agent = AgentProc(tmp_path, check, name="agent-check")
        agents.append(agent)
        samples = agent.scrape()
        after = sum(v for _l, v in samples.get("openfinance_status_transitions_total", []))
        assert after == transitions_before, "transition counts must survive SIGKILL"
        _accounts, suspects = fleet_from_metrics(samples)
        assert suspects == {}, "two MFA attempts are not yet a loop"
        agent.stop()
        agent = AgentProc(tmp_path, config, name="agent-final")
        agents.append(agent)
        # The third MFA night, seen by a third process: suspects exactly as the truth says.
        agent.wait_sweeps({name: 1 for name in SOURCES.values()})
        truth = sandbox.truth()
        _accounts, want = fleet_from_truth(truth)
        _accounts, got = fleet_from_metrics(agent.scrape())
        assert got == want and got
        broken = [v for labels, v in agent.scrape().get(
            "openfinance_broken_account_age_seconds_gcount", []) if labels["category"] == "mfa"]
        assert broken and broken[0] > 0
    finally:
        for a in agents:
            a.stop()
        sandbox.stop()


def test_sigterm_flushes_state_and_exits_zero(tmp_path):
    sandbox = Sandbox(tmp_path, _scenario(tmp_path))
    try:
        config = agent_config(tmp_path / "agent.yml", sandbox.url, tmp_path / "state.db",
                              interval=3600)
        agent = AgentProc(tmp_path, config)
        agent.wait_sweeps({name: 1 for name in SOURCES.values()})
        assert agent.stop(signal.SIGTERM) == 0
        assert "state flushed" in agent.log()
        assert not (tmp_path / "state.db-wal").exists() or (
            tmp_path / "state.db-wal").stat().st_size == 0
    finally:
        sandbox.stop()
