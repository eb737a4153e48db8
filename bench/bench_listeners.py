"""Benchmark of the listeners under hostile load (numbers for the issue notes; never asserted).

The real agent (push on, info logging) against the real sandbox:

- ``scrapes``: resident memory of the agent before, at the peak of and after ``--scrapes``
  parallel scrapes of /metrics (half with ``Accept-Encoding: gzip`` as Prometheus asks),
  with their latency p50/p99 and the body size;
- ``slow``: ``--slow`` clients per listener sending one header byte a second, against the
  default ``read_header_timeout`` (10 s): when each is closed (min/max), and the latency
  p50/p99 of the signed webhooks and scrapes sent meanwhile, one after another;
- ``headers``: resident memory before and after 10 clients each sending an unterminated
  8 MB header;
- ``tls``: the ``scrapes`` measure on a second agent behind TLS (``--web.config.file``),
  where each connection also holds asyncio's TLS buffers.

Run: ``python bench/bench_listeners.py [--scrapes 1000] [--slow 200] [--units 3000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_tracker import reference_loop  # noqa: E402
from exporter.sandbox import credentials  # noqa: E402
from exporter.webhooks.verify import finicity_signature  # noqa: E402
from tests.integration.listeners_support import slow_header_clients  # noqa: E402
from tests.integration.procs import (  # noqa: E402
    AgentProc,
    Sandbox,
    agent_config,
    free_port,
    served_owners,
    with_webhooks,
)

FIN = "finicity-sandbox"


def rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class Peak:
    """The peak resident memory of ``pid`` while in the ``with`` block (sampled every 20 ms)."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()

    def __enter__(self) -> Peak:
        self._thread = threading.Thread(target=self._run)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def parallel_scrapes(url: str, n: int, verify: ssl.SSLContext | bool = True,
                           ) -> tuple[list[float], int, dict[int, int]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits, verify=verify) as client:
        start = asyncio.Event()

        async def one(i: int) -> tuple[float, int, int]:
            await start.wait()
            t = time.perf_counter()
            headers = {"Accept-Encoding": "gzip" if i % 2 else "identity"}
            async with client.stream("GET", f"{url}/metrics", headers=headers) as answer:
                size = 0
                async for chunk in answer.aiter_raw():
                    size += len(chunk)
                    await asyncio.sleep(0.001)  # a reader a little slower than the server
            return time.perf_counter() - t, size, answer.status_code

        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        await asyncio.sleep(0.2)
        start.set()
        done = await asyncio.gather(*tasks)
    statuses: dict[int, int] = {}
    for _t, _s, code in done:
        statuses[code] = statuses.get(code, 0) + 1
    return [t for t, _s, _c in done], max(s for _t, s, _c in done), statuses


def bench_scrapes(pid: int, url: str, n: int, verify: ssl.SSLContext | bool = True,
                  what: str = "scrapes") -> None:
    httpx.get(f"{url}/metrics", timeout=60, verify=verify)
    before = rss(pid)
    with Peak(pid) as peak:
        times, size, statuses = asyncio.run(parallel_scrapes(url, n, verify))
    time.sleep(1)
    print(f"{what}: {n} in parallel, body up to {size / 1e6:.2f} MB, answers {statuses}; "
          f"p50 {pct(times, 0.5) * 1000:.0f} ms p99 {pct(times, 0.99) * 1000:.0f} ms; "
          f"RSS {before:.0f} MB before, {peak.peak:.0f} MB peak, {rss(pid):.0f} MB after")


def bench_slow(agent: AgentProc, hooks_port: int, per_listener: int, owners: list[str]) -> None:
    clients = slow_header_clients((agent.port, hooks_port), per_listener)
    opened = time.monotonic()
    closed: dict[int, float] = {}

    def trickle() -> None:
        while len(closed) < len(clients) and time.monotonic() - opened < 60:
            for i, s in enumerate(clients):
                if i in closed:
                    continue
                try:
                    s.send(b"a")
                    if s.recv(4096) in (b"",):
                        closed[i] = time.monotonic() - opened
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = time.monotonic() - opened
            time.sleep(1)

    thread = threading.Thread(target=trickle)
    thread.start()
    latencies = []
    n = 0
    with httpx.Client(timeout=30) as client:
        while thread.is_alive() and time.monotonic() - opened < 14:
            body = json.dumps({"customerId": owners[n % len(owners)], "eventType": "done",
                               "eventId": f"bench-slow-{n}-{time.time()}",
                               "payload": {}}).encode()
            sig = finicity_signature(credentials.FINICITY_PARTNER_SECRET.encode(), body)
            t = time.perf_counter()
            client.post(f"http://127.0.0.1:{hooks_port}/webhooks/{FIN}", content=body,
                        headers={"X-Finicity-Signature": sig})
            latencies.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.get(f"{agent.url}/metrics", headers={"Accept-Encoding": "gzip"})
            latencies.append(time.perf_counter() - t)
            n += 1
            time.sleep(0.1)
    thread.join()
    for s in clients:
        s.close()
    times = sorted(closed.values())
    print(f"slow headers: {len(clients)} clients ({per_listener} per listener), "
          f"{len(times)} closed after {times[0]:.1f}-{times[-1]:.1f} s (read_header_timeout "
          f"10 s); meanwhile {len(latencies)} webhooks and scrapes p50 "
          f"{pct(latencies, 0.5) * 1000:.0f} ms p99 {pct(latencies, 0.99) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")


def bench_headers(agent: AgentProc, hooks_port: int) -> None:
    pid = agent.popen.pid
    before = rss(pid)

    def endless(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            try:
                for _ in range(128):
                    s.sendall(b"z" * 65536)
            except OSError:
                pass

    with Peak(pid) as peak:
        threads = [threading.Thread(target=endless, args=(port,))
                   for port in (agent.port, hooks_port) for _ in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(f"endless headers: 10 × 8 MB; RSS {before:.0f} MB before, {peak.peak:.0f} MB peak, "
          f"{rss(pid):.0f} MB after")


def bench_tls(work: Path, sandbox: Sandbox, config: Path, n: int) -> None:
    from tests.integration.procs import EXPORTER, Proc, wait_for
    from tests.tls_support import CA

    ca = CA(work / "pki")
    web = work / "web"
    web.mkdir()
    ca.issue("agent", cert_path=web / "tls.crt", key_path=web / "tls.key")
    web_config = web / "web-config.yml"
    web_config.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": "tls.crt",
                                                                 "key_file": "tls.key"}}))
    tls_config = work / "agent-tls.yml"
    doc = yaml.safe_load(config.read_text())
    doc["state"]["path"] = str(work / "state-tls.db")
    doc.pop("webhooks", None)
    for src in doc["sources"]:
        src.pop("webhooks", None)
    tls_config.write_text(yaml.safe_dump(doc))
    port = free_port()
    agent = Proc("agent-tls", [*EXPORTER, "run", "--config.file", str(tls_config),
                               "--web.listen-address", f"127.0.0.1:{port}",
                               "--web.config.file", str(web_config)], work)
    ctx = ssl.create_default_context(cafile=str(ca.path))
    url = f"https://127.0.0.1:{port}"
    try:
        def swept() -> bool:
            lines = httpx.get(f"{url}/metrics", verify=ctx).text.splitlines()
            return all(any(line.startswith("openfinance_sweeps_total{") and f'"{source}"' in line
                           and '"success"' in line and not line.endswith(" 0.0")
                           for line in lines) for source in (FIN, "mx-sandbox"))

        wait_for(swept, 300, "the TLS agent's first sweeps")
        bench_scrapes(agent.popen.pid, url, n, ctx, "TLS scrapes")
    finally:
        agent.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scrapes", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--units", type=int, default=3000)
    args = parser.parse_args()
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    with tempfile.TemporaryDirectory(prefix="bench-listeners-") as tmp:
        work = Path(tmp)
        scenario = work / "scenario.yml"
        scenario.write_text(yaml.safe_dump({"finicity": {"units": args.units},
                                            "mx": {"units": args.units // 2}}))
        sandbox = Sandbox(work, scenario)
        config = agent_config(work / "agent.yml", sandbox.url, work / "state.db")
        hooks_port = free_port()
        with_webhooks(config, hooks_port, "mx-hooks", "mx-hooks-password-123")
        agent = AgentProc(work, config)
        try:
            agent.wait_sweeps({FIN: 1, "mx-sandbox": 1}, timeout=300)
            owners = list(served_owners(config, FIN))[:50]
            bench_scrapes(agent.popen.pid, agent.url, args.scrapes)
            bench_slow(agent, hooks_port, args.slow, owners)
            bench_headers(agent, hooks_port)
        finally:
            agent.stop()
        try:
            bench_tls(work, sandbox, config, args.scrapes)
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main()
