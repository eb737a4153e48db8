"""The repair loop end to end: the real agent against the sandbox, a real local receiver.

A login that breaks with a fixable code yields exactly one signed fix request, also across
a SIGKILL of the agent; the redirect link mints a fresh sandbox Connect Fix link per click
and refuses a tampered token; the sandbox user completes the fix and the agent counts the
episode ``fixed``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from exporter.status_codes import Catalog
from tests.integration.procs import AgentProc, Sandbox, agent_config, free_port, wait_for

pytestmark = pytest.mark.integration

SOURCES = ("finicity-sandbox", "mx-sandbox")
SMALL = {"finicity": {"units": 150}, "mx": {"units": 100}}
SECRET = "integration-test-secret"


class Receiver:
    """The partner's endpoint: stores every POST as received (and the sandbox night it came
    in, as the test sets ``night``), then answers 200 after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0):
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.night = 0
        received, receiver = self.requests, self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                received.append(({**headers, "x-test-night": str(receiver.night)}, raw))
                if delay:
                    time.sleep(delay)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fix-requests"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self) -> dict[str, dict]:
        """Request id → body (a re-send after a crash carries the same id)."""
        return {h["idempotency-key"]: json.loads(raw) for h, raw in self.requests}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def signature_ok(headers: dict[str, str], raw: bytes) -> bool:
    """The receiver's check, from the contract alone."""
    fields = dict(part.split("=", 1) for part in headers["x-openfinance-signature"].split(","))
    mac = hmac.new(SECRET.encode(), fields["t"].encode() + b"." + raw, hashlib.sha256)
    return (abs(time.time() - int(fields["t"])) <= 300
            and hmac.compare_digest(mac.hexdigest(), fields["v1"]))


def repair_config(tmp_path, sandbox_url: str, receiver_url: str, **remediation) -> Path:
    """The demo's agent configuration (sweeps every second) with the repair loop on,
    signing with ``SECRET`` and sending to ``receiver_url``."""
    (tmp_path / "secret").write_text(SECRET)
    path = agent_config(tmp_path / "agent.yml", sandbox_url, tmp_path / "state.db", interval=1)
    config = yaml.safe_load(path.read_text())
    config["remediation"] = {"enabled": True, "endpoint": receiver_url,
                             "secret_file": str(tmp_path / "secret"), "evaluate_interval": "1s",
                             **remediation}
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def redirect_rig(work: Path, scenario: dict, **remediation
                 ) -> Iterator[tuple[Sandbox, Receiver, Callable[[str], AgentProc]]]:
    """The sandbox serving ``scenario``, a receiver, and a way to start agents (by name)
    with the repair loop on and fix links redirecting through the agent's own listener;
    stops them all after."""
    scenario_path = work / "scenario.yml"
    scenario_path.write_text(yaml.safe_dump(scenario))
    sandbox = Sandbox(work, scenario_path)
    receiver = Receiver()
    fix_port = free_port()
    path = repair_config(work, sandbox.url, receiver.url, link="redirect",
                         public_url=f"http://127.0.0.1:{fix_port}",
                         listen_address=f"127.0.0.1:{fix_port}", **remediation)
    agents: list[AgentProc] = []

    def start(name: str) -> AgentProc:
        agents.append(AgentProc(work, path, name=name))
        return agents[-1]

    try:
        yield sandbox, receiver, start
    finally:
        for a in agents:
            a.stop()
        receiver.stop()
        sandbox.stop()


@pytest.fixture
def rig(tmp_path):
    with redirect_rig(tmp_path, SMALL, backoff_base="1s", backoff_max="2s") as rig:
        yield rig


def test_one_signed_request_per_broken_login_survives_sigkill_and_ends_fixed(rig):
    sandbox, receiver, start = rig
    catalog = Catalog.default()
    agent = start("agent-1")
    agent.wait_sweeps({name: 1 for name in SOURCES})
    agent.next_sweeps(SOURCES)
    assert receiver.requests == [], "logins broken before the first sweep are backlog"

    sandbox.advance(1)
    agent.next_sweeps(SOURCES)
    wait_for(lambda: receiver.requests and agent.value("openfinance_fix_requests_pending") == 0,
             60, "fix requests delivered")
    before_kill = receiver.bodies()
    delivered = agent.value("openfinance_fix_requests_total", result="delivered")
    assert delivered == len(before_kill) > 0
    for headers, raw in receiver.requests:
        assert signature_ok(headers, raw)
        body = json.loads(raw)
        assert headers["idempotency-key"] == body["id"]
        info = catalog.lookup(body["provider"], body["code"])
        assert info.fixable and body["category"] == info.category
        assert body["kind"] in ("fix", "otp_each_refresh")
    logins = Counter((b["provider"], b.get("customer_id") or b.get("user_guid"), b["login_id"])
                     for b in before_kill.values())
    assert max(logins.values()) == 1, "one request per login and episode"

    assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
    agent = start("agent-2")
    agent.next_sweeps(SOURCES)
    agent.next_sweeps(SOURCES)
    # Nothing sent twice across the SIGKILL: every request is still its login's only one (a
    # login whose request was created only after the first wait may get its first now).
    after_restart = receiver.bodies()
    assert before_kill.keys() <= after_restart.keys()
    per_login = Counter((b["provider"], b.get("customer_id") or b.get("user_guid"), b["login_id"])
                        for b in after_restart.values())
    assert max(per_login.values()) == 1, "one request per login and episode after a restart"

    # The user clicks: the agent's redirect mints a fresh sandbox link on each click
    # (Finicity Connect Fix URL, MX widget URL), and the user completes the repair there.
    clicked = []
    for provider in ("finicity", "mx"):
        request = next((b for b in before_kill.values()
                        if b["kind"] == "fix" and b["provider"] == provider), None)
        if request is None:
            continue
        clicked.append(request)
        first = httpx.get(request["link"], follow_redirects=False)
        second = httpx.get(request["link"], follow_redirects=False)
        assert first.status_code == second.status_code == 302, (provider, first.text)
        assert first.headers["location"] != second.headers["location"]
        separator = "&" if "?" in second.headers["location"] else "?"
        page = httpx.get(second.headers["location"] + separator + "complete=1")
        assert page.status_code in (200, 303), page.text
    assert clicked
    tampered = httpx.get(clicked[0]["link"][:-3] + "AAA", follow_redirects=False)
    assert tampered.status_code == 400 and "not valid" in tampered.text

    wait_for(lambda: agent.value("openfinance_fix_outcomes_total", outcome="fixed")
             >= len(clicked), 60, "the fixed episodes to be counted")
    assert agent.value("openfinance_fix_resolution_seconds_count") >= len(clicked)
    after_fix = httpx.get(clicked[0]["link"], follow_redirects=False)
    assert after_fix.status_code == 410 and "Nothing to fix" in after_fix.text
