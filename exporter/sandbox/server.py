"""Run the sandbox with uvicorn inside the current event loop (next to the agent, if wanted),
on the agent's own quiet server class (:class:`exporter.web.server.Server`)."""

from __future__ import annotations

import asyncio

import uvicorn

from exporter.sandbox.app import create_app, runtime_of
from exporter.sandbox.clock import SandboxClock
from exporter.sandbox.runtime import SandboxRuntime
from exporter.sandbox.scenario import Scenario
from exporter.web.server import Server


class SandboxServer:
    """The sandbox on a real socket, started and stopped from async code.

    ::

        async with SandboxServer(load_scenario(None), port=0) as sandbox:
            sandbox.finicity_base_url  # http://127.0.0.1:PORT/finicity
    """

    def __init__(self, scenario: Scenario, host: str = "127.0.0.1", port: int = 9878, *,
                 clock: SandboxClock | None = None, log_level: str = "warning",
                 access_log: bool = False):
        self.app = create_app(scenario, clock)
        self.host = host
        self._port = port
        config = uvicorn.Config(self.app, host=host, port=port, log_level=log_level,
                                access_log=access_log, lifespan="off", loop="none")
        self._server = Server(config)
        self._task: asyncio.Task | None = None

    @property
    def runtime(self) -> SandboxRuntime:
        return runtime_of(self.app)

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with ``port=0``, once started)."""
        for server in getattr(self._server, "servers", []) or []:
            for sock in server.sockets:
                return sock.getsockname()[1]
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def finicity_base_url(self) -> str:
        return f"{self.base_url}/finicity"

    @property
    def mx_base_url(self) -> str:
        return f"{self.base_url}/mx"

    async def start(self) -> None:
        """Bind and start serving; returns once the socket accepts connections."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._server.serve(), name="sandbox-server")
        while not self._server.started:
            if self._task.done():
                self._task.result()  # re-raises a bind error
                raise RuntimeError("the sandbox server stopped during startup")
            await asyncio.sleep(0.01)
        self.runtime.webhooks.start_watching()

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._task = None
            await self.runtime.close()

    async def serve_forever(self) -> None:
        """Serve until cancelled (then shut down cleanly)."""
        await self.start()
        try:
            assert self._task is not None
            await asyncio.shield(self._task)
        finally:
            await self.stop()

    async def __aenter__(self) -> SandboxServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

