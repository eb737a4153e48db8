"""The real agent on a bad state file: a corrupt one is moved aside and the agent serves; a
second agent on a file in use is refused with a message, without disturbing the first."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.procs import EXPORTER, REPO, Proc, Sandbox, agent_config, free_port, wait_for
from tests.integration.prom import scrape, stop_all
from tests.integration.test_agent_sandbox import SOURCES, fleet_from_metrics, fleet_from_truth

pytestmark = pytest.mark.integration


def _agent(work, config, name: str, *args: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(name, [*EXPORTER, "run", "--config.file", str(config),
                       "--web.listen-address", f"127.0.0.1:{port}", *args], work)
    return proc, f"http://127.0.0.1:{port}"


def _ready(proc: Proc, url: str) -> bool:
    assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.log()[-3000:]}"
    try:
        return httpx.get(f"{url}/-/ready", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_corrupt_state_is_moved_aside_and_a_second_agent_is_refused(tmp_path):
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump({"finicity": {"units": 20}, "mx": {"units": 10}}))
    state = tmp_path / "state.db"
    state.write_bytes(b"definitely not SQLite\n" * 500)
    procs: list[Proc] = []
    try:
        sandbox = Sandbox(tmp_path, scenario)
        procs.append(sandbox)
        config = agent_config(tmp_path / "agent.yml", sandbox.url, state, interval=2)
        agent, url = _agent(tmp_path, config, "agent")
        procs.append(agent)
        wait_for(lambda: _ready(agent, url), 60, what="the agent on a corrupt file to be ready")
        wait_for(lambda: "openfinance_accounts" in scrape(url), 60, what="fleet series")
        moved = sorted(tmp_path.glob("state.db.corrupt-*"))
        assert [p.name for p in moved if not p.name.endswith(("-wal", "-shm"))], moved
        assert "definitely not SQLite" in moved[0].read_text(errors="replace")
        assert scrape(url)["openfinance_state_recovered_total"] == [({}, 1.0)]
        log = agent.log()
        assert log.count("state file is corrupt, moved aside") == 1
        assert "Traceback" not in log

        second = subprocess.run(
            [*EXPORTER, "run", "--config.file", str(config), "--web.listen-address",
             f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60,
            cwd=REPO, check=False)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "is in use by another agent" in second.stderr
        assert "Traceback" not in second.stderr
        assert _ready(agent, url), "the first agent is undisturbed"
    finally:
        stop_all(reversed(procs))


def _total(samples: dict[str, list], name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, [])
               if all(labels.get(k) == want for k, want in match.items()))


def test_a_full_disk_fails_sweeps_visibly_keeps_every_gauge_and_recovers(tmp_path):
    """RLIMIT_FSIZE on the running agent (Python ignores SIGXFSZ, so writes past the limit
    fail with EFBIG): sweeps fail with a reason, no gauge moves, and once the limit is lifted
    the next sweep writes the new night."""
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump({"finicity": {"units": 300}, "mx": {"units": 100}}))
    procs: list[Proc] = []
    try:
        sandbox = Sandbox(tmp_path, scenario)
        procs.append(sandbox)
        config = agent_config(tmp_path / "agent.yml", sandbox.url, tmp_path / "state.db",
                              interval=1)
        agent, url = _agent(tmp_path, config, "agent", "--log.level", "warn")
        procs.append(agent)
        wait_for(lambda: _ready(agent, url), 60, what="the agent to be ready")
        wait_for(lambda: fleet_from_metrics(scrape(url))[0] == fleet_from_truth(
            sandbox.truth())[0], 90, what="the fleet to match the sandbox")
        before, _ = fleet_from_metrics(scrape(url))
        failed_before = _total(scrape(url), "openfinance_sweeps_total", result="failed")

        def successes() -> dict[str, float]:
            samples = scrape(url)
            return {p: _total(samples, "openfinance_sweeps_total", source=name, result="success")
                    for p, name in SOURCES.items()}

        def of(fleet: dict, provider: str) -> dict:
            return {k: v for k, v in fleet.items() if k[0] == provider}

        pid = agent.popen.pid
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE,
                         (agent.log_path.stat().st_size + 256 * 1024, hard))
        sandbox.advance(1)  # a new night: every account has a new attempt to write
        fin = SOURCES["finicity"]

        def write_failures() -> float:
            return _total(scrape(url), "openfinance_state_write_failures_total", source=fin)

        wait_for(lambda: write_failures() >= 2, 90, what="sweeps failing for want of disk")
        # (A sweep already running when the limit came may have finished: compare from here.)
        first, failures, wins = scrape(url), write_failures(), successes()["finicity"]
        wait_for(lambda: write_failures() >= failures + 2, 90, what="more failing sweeps")
        during = scrape(url)
        assert successes()["finicity"] == wins, "no sweep can succeed without disk"
        assert _total(during, "openfinance_sweeps_total", result="failed") > failed_before
        reasons = {labels["reason"] for labels, v in
                   during["openfinance_state_write_failures_total"] if v}
        assert reasons <= {"disk_full", "io_error"}, reasons
        kept = of(fleet_from_metrics(during)[0], "finicity")
        assert kept and kept == of(fleet_from_metrics(first)[0], "finicity"), \
            "no gauge moved while writes failed"
        assert agent.popen.poll() is None

        resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
        wait_for(lambda: fleet_from_metrics(scrape(url))[0] == fleet_from_truth(
            sandbox.truth())[0], 120, what="the new night written once the disk has room")
        assert fleet_from_metrics(scrape(url))[0] != before, "the night changed something"
        assert "Traceback" not in agent.log()
    finally:
        stop_all(reversed(procs))


def _make_read_only(path: Path) -> None:
    """Read-only even for root (who ignores file modes): the immutable attribute."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o444)


def _make_writable(path: Path) -> None:
    if os.geteuid() == 0:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o644)


def test_a_read_only_state_file_fails_sweeps_visibly_without_a_crash(tmp_path):
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump({"finicity": {"units": 40}, "mx": {"units": 20}}))
    state = tmp_path / "state.db"
    procs: list[Proc] = []
    try:
        sandbox = Sandbox(tmp_path, scenario)
        procs.append(sandbox)
        config = agent_config(tmp_path / "agent.yml", sandbox.url, state, interval=1)
        first, url = _agent(tmp_path, config, "first", "--log.level", "warn")
        procs.append(first)
        wait_for(lambda: _ready(first, url), 60, what="the agent to be ready")
        wait_for(lambda: fleet_from_metrics(scrape(url))[0] == fleet_from_truth(
            sandbox.truth())[0], 90, what="the fleet to match the sandbox")
        stop_all([procs.pop()])  # a clean stop: the WAL is checkpointed into the file
        sandbox.advance(1)
        _make_read_only(state)
        try:
            agent, url = _agent(tmp_path, config, "agent", "--log.level", "warn")
            procs.append(agent)
            wait_for(lambda: _ready(agent, url), 60, what="the agent on a read-only file")
            wait_for(lambda: _total(scrape(url), "openfinance_state_write_failures_total") >= 2,
                     90, what="sweeps failing on a read-only file")
            samples = scrape(url)
            reasons = {labels["reason"] for labels, v in
                       samples["openfinance_state_write_failures_total"] if v}
            assert reasons == {"read_only"}, reasons
            assert _total(samples, "openfinance_sweeps_total", result="success") == 0
            assert fleet_from_metrics(samples)[0], "the stored fleet is served, not zeroed"
            assert agent.popen.poll() is None and "Traceback" not in agent.log()
        finally:
            _make_writable(state)
    finally:
        stop_all(reversed(procs))
