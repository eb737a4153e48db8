"""The webhook inbox across a crash: a real listener process answers 200, is SIGKILLed before
it could process the event, and the restarted process processes it exactly once.

The process here is the webhook listener with its inbox and processor, and a stand-in
source that records which owners it re-read (the whole agent is tested in test_push.py).
"""

from __future__ import annotations

import signal
import sys
import textwrap

import httpx
import yaml

from tests.integration.procs import Proc, free_port, wait_for
from tests.unit.test_webhooks_support import SECRET, connect_event, sign

RUNNER = textwrap.dedent('''
    import asyncio, os, sys
    from exporter.config import load_config
    from exporter.state.database import StateDatabase
    from exporter.web.server import http_server, serve_until_signal
    from exporter.webhooks.observer import NullWebhookObserver
    from exporter.webhooks.service import PushService

    REREADS = sys.argv[2]

    class Source:
        def __init__(self, name, provider):
            self.name, self.provider = name, provider
        def owns(self, owner):
            return True
        async def refresh_owner(self, owner):
            if os.environ.get("FREEZE"):
                await asyncio.Event().wait()
            with open(REREADS, "a") as f:
                f.write(owner + "\\n")
            return []

    class Tracker:
        async def apply_records(self, source, provider, records):
            pass

    async def main():
        settings = load_config(sys.argv[1])
        sources = {s.name: Source(s.name, s.provider) for s in settings.sources}
        push = PushService(settings.webhooks, settings.sources, sources, Tracker(),
                           NullWebhookObserver(), StateDatabase(settings.state.path))
        await push.start()
        try:
            await serve_until_signal([http_server(push.app, settings.webhooks.listen_address)])
        finally:
            await push.stop()

    asyncio.run(main())
''')


def test_event_acknowledged_then_sigkilled_is_processed_once_after_restart(tmp_path):
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({
        "state": {"path": str(tmp_path / "state.db")},
        "webhooks": {"listen_address": f"127.0.0.1:{port}"},
        "sources": [{"name": "finicity-prod", "provider": "finicity",
                     "base_url": "http://127.0.0.1:9", "app_key": "k", "partner_id": "p",
                     "partner_secret": SECRET, "webhooks": {}}]}))
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    rereads = tmp_path / "rereads.txt"
    url = f"http://127.0.0.1:{port}/webhooks/finicity-prod"
    ping = b'{"eventType":"ping","payload":{}}'
    body = connect_event("done", customer="7001")

    def post(content: bytes) -> httpx.Response:
        return httpx.post(url, content=content, timeout=5,
                          headers={"X-Finicity-Signature": sign(content)})

    def start(**env) -> Proc:
        proc = Proc("listener", [sys.executable, str(runner), str(config), str(rereads)],
                    tmp_path, env=env)
        wait_for(lambda: post(ping).status_code == 200, what="the listener")
        return proc

    first = start(FREEZE="1")
    try:
        assert post(body).status_code == 200
    finally:
        first.stop(signal.SIGKILL)
    assert first.popen.returncode == -signal.SIGKILL
    assert not rereads.exists()

    second = start()
    try:
        wait_for(lambda: rereads.read_text() == "7001\n", what="the event processed")
        assert post(body).status_code == 200  # the redelivery: a duplicate
        assert post(connect_event("done", customer="7002", event_id="2-b")).status_code == 200
        wait_for(lambda: rereads.read_text() == "7001\n7002\n", what="the next event")
    finally:
        assert second.stop() == 0, second.log()
    assert rereads.read_text() == "7001\n7002\n"
