"""SandboxServer: the sandbox on a real loopback socket, on the agent's own server class."""

from __future__ import annotations

import httpx

from exporter.sandbox import FINICITY_APP_KEY, SandboxServer, load_scenario
from exporter.server import Server
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
