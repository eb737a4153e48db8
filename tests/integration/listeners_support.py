"""A real agent with both listeners (metrics, and webhooks serving ``/fix/<token>``) against
the sandbox and a real fix-request receiver, and raw-socket clients to probe it as an
attacker would (bytes no HTTP library would send)."""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

import yaml

from exporter.sandbox import credentials
from exporter.webhooks.verify import finicity_signature
from tests.integration.procs import AgentProc, Sandbox, free_port, with_webhooks
from tests.integration.push_support import FIN, MX, MX_PASSWORD, MX_USER, connect_event
from tests.integration.test_repair_loop import SMALL, Receiver, repair_config

__all__ = ["FIN", "MX", "MX_PASSWORD", "MX_USER", "connect_event"]  # (re-exported)

SOURCES = (FIN, MX)
HEADER_TIMEOUT = 2.0  # read_header_timeout of both listeners in these tests


class Rig:
    """Sandbox, receiver and agent; ``hooks_port`` serves webhooks and fix links."""

    def __init__(self, work: Path, *, name: str = "agent", **remediation):
        self.work = work
        scenario = work / "scenario.yml"
        scenario.write_text(yaml.safe_dump(SMALL))
        self.sandbox = Sandbox(work, scenario)
        self.receiver = Receiver()
        self.hooks_port = free_port()
        self.config = repair_config(work, self.sandbox.url, self.receiver.url, link="redirect",
                                    public_url=f"http://127.0.0.1:{self.hooks_port}",
                                    backoff_base="1s", backoff_max="2s", **remediation)
        with_webhooks(self.config, self.hooks_port, MX_USER, MX_PASSWORD)
        doc = yaml.safe_load(self.config.read_text())
        doc["webhooks"]["read_header_timeout"] = f"{HEADER_TIMEOUT:g}s"
        doc.setdefault("web", {})["read_header_timeout"] = f"{HEADER_TIMEOUT:g}s"
        self.config.write_text(yaml.safe_dump(doc))
        self.agents: list[AgentProc] = []
        self.agent = self.start(name)

    def start(self, name: str) -> AgentProc:
        self.agents.append(AgentProc(self.work, self.config, name=name))
        self.agent = self.agents[-1]
        return self.agent

    @property
    def hooks(self) -> str:
        return f"http://127.0.0.1:{self.hooks_port}"

    def fix_links(self) -> list[dict]:
        """Fix requests the receiver got (each with its ``link``), kind ``fix``."""
        return [b for b in self.receiver.bodies().values() if b["kind"] == "fix" and b["link"]]

    def inbox_rows(self) -> int:
        with sqlite3.connect(f"file:{self.work / 'state.db'}?mode=ro", uri=True) as db:
            return db.execute("SELECT COUNT(*) FROM webhook_inbox").fetchone()[0]

    def stop(self) -> None:
        for a in self.agents:
            a.stop()
        self.receiver.stop()
        self.sandbox.stop()


def slow_header_clients(ports, per_port: int) -> list[socket.socket]:
    """``per_port`` non-blocking connections to each port, each having sent a request line
    and the start of a header it never finishes (the caller trickles the rest)."""
    clients = []
    for port in ports:
        for _ in range(per_port):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            s.setblocking(False)
            clients.append(s)
    return clients


def signature(body: bytes) -> str:
    return finicity_signature(credentials.FINICITY_PARTNER_SECRET.encode(), body)


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` as is; everything the server answers until it closes (or ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before taking it all
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def status(answer: bytes) -> int:
    """The status code of a raw answer (0: none)."""
    if not answer.startswith(b"HTTP/1."):
        return 0
    return int(answer.split(b" ", 2)[1])


def header(answer: bytes, name: bytes) -> bytes | None:
    head = answer.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def assert_no_traceback(log: str) -> None:
    assert "Traceback" not in log, log[-4000:]
    assert "Exception in ASGI application" not in log, log[-4000:]
