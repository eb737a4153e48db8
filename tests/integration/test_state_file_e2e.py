"""The real agent on a bad state file: a corrupt one is moved aside and the agent serves; a
second agent on a file in use is refused with a message, without disturbing the first."""

from __future__ import annotations

import subprocess

import httpx
import pytest
import yaml

from tests.integration.procs import EXPORTER, REPO, Proc, Sandbox, agent_config, free_port, wait_for
from tests.integration.prom import scrape, stop_all

pytestmark = pytest.mark.integration


def _agent(work, config, name: str) -> tuple[Proc, str]:
    port = free_port()
    proc = Proc(name, [*EXPORTER, "run", "--config.file", str(config),
                       "--web.listen-address", f"127.0.0.1:{port}"], work)
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
