"""The metrics listener behind TLS and a bcrypt user (cost 8, to keep the test short), right
after a (re)start with nothing cached: 200 wrong passwords in parallel, from 20 other client
addresses, do not make the correct scrape wait behind them; a non-ASCII ``Authorization`` is a counted 401 on the TLS
listener, as a non-ASCII signature is on the TLS webhook listener."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import time

import httpx
import pytest
import yaml

from tests.integration.listeners_support import (
    FIN,
    MX_PASSWORD,
    MX_USER,
    assert_no_traceback,
    connect_event,
)
from tests.integration.procs import (
    EXPORTER,
    Proc,
    Sandbox,
    agent_config,
    free_port,
    wait_for,
    with_webhooks,
)
from tests.tls_support import CA, bcrypt_hash

pytestmark = pytest.mark.integration

USER, PASSWORD = "prometheus", "correct horse battery staple"
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 22)]  # 20 addresses, 10 guesses each


@pytest.fixture
def stack(tmp_path):
    ca = CA(tmp_path / "pki")
    web = tmp_path / "web"
    web.mkdir()
    ca.issue("agent", cert_path=web / "tls.crt", key_path=web / "tls.key")
    shutil.copy(ca.path, web / "ca.crt")
    web_config = web / "web-config.yml"
    web_config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key"},
        "basic_auth_users": {USER: bcrypt_hash(PASSWORD, rounds=8)}}))
    scenario = tmp_path / "scenario.yml"
    scenario.write_text(yaml.safe_dump({"finicity": {"units": 20}, "mx": {"units": 20}}))
    sandbox = Sandbox(tmp_path, scenario)
    config = agent_config(tmp_path / "agent.yml", sandbox.url, tmp_path / "state.db")
    hooks_port = free_port()
    with_webhooks(config, hooks_port, MX_USER, MX_PASSWORD)
    port = free_port()
    agent = Proc("agent", [*EXPORTER, "run", "--config.file", str(config),
                           "--web.listen-address", f"127.0.0.1:{port}",
                           "--web.config.file", str(web_config), "--log.level", "debug"],
                 tmp_path)
    ctx = ssl.create_default_context(cafile=str(ca.path))

    def ready() -> bool:
        assert agent.popen.poll() is None, agent.log()
        return httpx.get(f"https://127.0.0.1:{port}/-/ready", verify=ctx).status_code == 200

    try:
        wait_for(ready, 60, "the agent on https")
        yield agent, f"https://127.0.0.1:{port}", f"https://127.0.0.1:{hooks_port}", ctx
    finally:
        agent.stop()
        sandbox.stop()


def refused(url: str, ctx: ssl.SSLContext, reason: str) -> float:
    text = httpx.get(f"{url}/metrics", auth=(USER, PASSWORD), verify=ctx, timeout=30).text
    for line in text.splitlines():
        if line.startswith(f'openfinance_web_requests_refused_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_wrong_passwords_in_parallel_do_not_queue_up_the_correct_scrape(stack):
    _agent, url, _hooks, ctx = stack
    order: list[str] = []

    async def guess(client: httpx.AsyncClient, n: int) -> int:
        answer = await client.get(f"{url}/metrics", auth=(USER, f"wrong-{n}"))
        order.append("wrong")
        return answer.status_code

    async def run() -> tuple[int, list[int], float]:
        clients = [httpx.AsyncClient(verify=ctx, timeout=60, transport=httpx.AsyncHTTPTransport(
            verify=ctx, local_address=address)) for address in ATTACKERS]
        scraper = httpx.AsyncClient(verify=ctx, timeout=60)
        try:
            wrong = [asyncio.create_task(guess(clients[n % len(clients)], n))
                     for n in range(200)]
            await asyncio.sleep(0.5)  # the guesses are connected and queued
            started = time.monotonic()
            right = await scraper.get(f"{url}/metrics", auth=(USER, PASSWORD))
            waited = time.monotonic() - started
            order.append("right")
            return right.status_code, await asyncio.gather(*wrong), waited
        finally:
            for c in [*clients, scraper]:
                await c.aclose()

    right, wrong, waited = asyncio.run(run())
    before = order.index("right")
    print(f"correct scrape after {waited:.2f}s with {200 - before} wrong guesses still queued "
          f"({wrong.count(401)} × 401, {wrong.count(429)} × 429)")
    assert right == 200
    assert set(wrong) <= {401, 429} and wrong.count(401) >= 100, sorted(set(wrong))
    assert before <= 100, f"{before} of 200 wrong guesses were answered before the right one"


def test_non_ascii_credentials_and_signatures_are_a_counted_401_over_tls(stack):
    agent, url, hooks, ctx = stack
    invalid = refused(url, ctx, "invalid")
    for value in (b"Basic " + "é".encode() * 8, b"Basic \xff\xfe\xfd",
                  "Basic Zm9vOmJhcg==é".encode()):
        answer = httpx.get(f"{url}/metrics", headers={"Authorization": value}, verify=ctx)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Basic"
    assert refused(url, ctx, "invalid") == invalid + 3
    body = connect_event("1005000001", "tls-1")
    for sig in ("é".encode() * 32, b"\xff" * 64):
        answer = httpx.post(f"{hooks}/webhooks/{FIN}", content=body, verify=ctx,
                            headers={"X-Finicity-Signature": sig})
        assert answer.status_code == 401
    assert_no_traceback(agent.log())
