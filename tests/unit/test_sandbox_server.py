"""SandboxServer: the sandbox on a real loopback socket, on the agent's own server class."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import httpx

from exporter.sandbox import FINICITY_APP_KEY, SandboxServer, load_scenario
from exporter.web.server import Server
from tests.unit.test_sandbox_support import SMALL


async def test_serves_on_a_free_port_and_stops():
    sandbox = SandboxServer(load_scenario(None, SMALL), "127.0.0.1", 0)
    assert isinstance(sandbox._server, Server)
    async with sandbox:
        assert sandbox.port != 0
        async with httpx.AsyncClient() as http:
            state = (await http.get(f"{sandbox.base_url}/sandbox/state")).json()
            assert state["fleet"]["finicity"]["units"] == SMALL["finicity"]["units"]
            # A provider route without credentials is refused by the one auth guard.
            r = await http.get(f"{sandbox.finicity_base_url}/aggregation/v1/customers",
                               headers={"Finicity-App-Key": FINICITY_APP_KEY})
            assert r.status_code == 401 and r.json()["code"] == "10024"
        sandbox.runtime.clock.advance(1)
        assert sandbox.runtime.clock.night == 1
    assert sandbox._task is None


class _Receiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict]] = []

    def do_POST(self):
        length = int(self.headers.get("content-length", 0))
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


async def test_in_auto_mode_each_new_night_sends_its_webhooks_to_a_real_receiver():
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
    scenario = load_scenario(None, {**SMALL, "night_seconds": 0.5,
                                    "webhooks": {"mx_url": url, "retry_seconds": 0}})
    try:
        async with SandboxServer(scenario, "127.0.0.1", 0) as sandbox:
            async def first_event() -> None:
                while not _Receiver.bodies:  # no request reaches the sandbox: its night timer
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(first_event(), timeout=60)
            assert sandbox.runtime.clock.night >= 1
        assert all(b.get("action") in ("updated", "CHANGED") for b in _Receiver.bodies)
    finally:
        receiver.shutdown()
        receiver.server_close()
        thread.join()
