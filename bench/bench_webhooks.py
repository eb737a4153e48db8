"""Benchmark of the webhook listener (numbers for the issue notes; never asserted in tests).

Verified Finicity Connect events per second with dedupe persisted: a real listener process
(uvicorn, the Starlette app, HMAC check, the SQLite inbox with group commit, the processor
coalescing per owner against an instant stand-in source) is pinned to one CPU and driven
over HTTP by ``--clients`` concurrent connections from this process. Reported: wall-clock
events per second, and events per CPU-second of the listener process (its own capacity on
one core, whatever the load generator costs), plus answer latency p50/p99.

With ``--agent``: the real agent (``openfinance-exporter run``, push on) against the real
sandbox; events name the sandbox's customers, each re-read goes to the sandbox over HTTP,
and the latency from an event's arrival to its re-read applied is read from the agent's
``openfinance_push_refresh_duration_seconds`` histogram (p50/p99 interpolated in buckets).

Run: ``python bench/bench_webhooks.py [--events 20000] [--clients 64] [--owners 500]
[--agent]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_tracker import reference_loop  # noqa: E402

SECRET = "bench-partner-secret"


async def serve(config_path: str) -> None:
    """The listener alone: PushService with an instant source and a tracker that drops."""
    from exporter.config import load_config
    from exporter.server import http_server, serve_until_signal
    from exporter.webhooks.observer import NullWebhookObserver
    from exporter.webhooks.service import PushService

    class Source:
        def __init__(self, name: str, provider: str):
            self.name, self.provider = name, provider

        def owns(self, owner: str) -> bool:
            return True

        async def refresh_owner(self, owner: str) -> list:
            return []

    class Tracker:
        async def apply_records(self, source, provider, records) -> None:
            pass

    settings = load_config(config_path)
    push = PushService(settings.webhooks, settings.sources,
                       {s.name: Source(s.name, s.provider) for s in settings.sources},
                       Tracker(), NullWebhookObserver(), settings.state.path)
    await push.start()
    profile = None
    if os.environ.get("BENCH_PROFILE"):
        import cProfile

        profile = cProfile.Profile()
        profile.enable()
    try:
        await serve_until_signal([http_server(push.app, settings.webhooks.listen_address)])
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(os.environ["BENCH_PROFILE"])
        await push.stop()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drive(url: str, events: int, clients: int, owners: int,
                names: list[str] | None = None) -> list[float]:
    """Send ``events`` signed deliveries over ``clients`` keep-alive connections; returns
    each answer's latency. Plain HTTP/1.1 over asyncio streams: a load generator that costs
    far less CPU than the listener it measures (httpx here cost ~4x the listener)."""
    parts = urlsplit(url)
    requests = []
    for i in range(events):
        owner = names[i % owners] if names else str(1_000_000 + i % owners)
        body = json.dumps({"customerId": owner, "eventType": "done",
                           "eventId": f"{i}-{i:024x}", "payload": {}},
                          separators=(",", ":")).encode()
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        requests.append(
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nX-Finicity-Signature: {sig}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    latencies: list[float] = []
    todo = iter(requests)

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            for request in todo:
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
                if status != 200:
                    raise SystemExit(f"unexpected answer {status}")
        finally:
            writer.close()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus-style quantile from cumulative (le, count) pairs."""
    buckets = sorted(buckets)
    total = buckets[-1][1]
    rank, prev_le, prev_count = q * total, 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_le, prev_count = le, count
    return prev_le


def run_agent(args) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from exporter.demo import sandbox_config
    from tests.integration.procs import AgentProc, Sandbox, free_port, wait_for

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sandbox = Sandbox(tmp_path, night_seconds=0)
        agent = None
        try:
            hook_port = free_port()
            cfg = sandbox_config(sandbox.url, state_path=tmp_path / "state.db", interval=86400,
                                 jitter=0, http={"rate_limit_per_second": 5000,
                                                 "rate_limit_burst": 500})
            cfg["webhooks"] = {"listen_address": f"127.0.0.1:{hook_port}", "concurrency": 16}
            cfg["sources"][0]["webhooks"] = {}
            (tmp_path / "agent.yml").write_text(yaml.safe_dump(cfg))
            agent = AgentProc(tmp_path, tmp_path / "agent.yml")
            agent.wait_sweeps({"finicity-sandbox": 1})
            from exporter.sandbox import credentials
            global SECRET
            SECRET = credentials.FINICITY_PARTNER_SECRET
            token = httpx.post(f"{sandbox.url}/finicity/aggregation/v2/partners/authentication",
                            headers={"Finicity-App-Key": credentials.FINICITY_APP_KEY,
                                     "Accept": "application/json"},
                            json={"partnerId": credentials.FINICITY_PARTNER_ID,
                                  "partnerSecret": SECRET}).json()["token"]
            page = httpx.get(f"{sandbox.url}/finicity/aggregation/v1/customers",
                          params={"limit": 1000, "start": 1},
                          headers={"Finicity-App-Key": credentials.FINICITY_APP_KEY,
                                   "Finicity-App-Token": token,
                                   "Accept": "application/json"}).json()
            customers = [str(c["id"]) for c in page["customers"]][:args.owners]
            url = f"http://127.0.0.1:{hook_port}/webhooks/finicity-sandbox"
            t0 = time.perf_counter()
            asyncio.run(drive(url, args.events, args.clients, len(customers), customers))
            wall = time.perf_counter() - t0

            def applied() -> float:
                text = httpx.get(f"{agent.url}/metrics", timeout=30).text
                for fam in text_string_to_metric_families(text):
                    if fam.name == "openfinance_push_refresh_duration_seconds":
                        return sum(s.value for s in fam.samples if s.name.endswith("_count"))
                return 0.0
            wait_for(lambda: applied() >= args.events, timeout=600, what="all events applied")
            text = httpx.get(f"{agent.url}/metrics", timeout=30).text
            buckets = [(float(s.labels["le"]), s.value)
                       for fam in text_string_to_metric_families(text)
                       if fam.name == "openfinance_push_refresh_duration_seconds"
                       for s in fam.samples if s.name.endswith("_bucket")]
        finally:
            if agent is not None:
                agent.stop()
            sandbox.stop()
    print(f"agent: events={args.events} owners={len(customers)} clients={args.clients}: "
          f"accepted {args.events / wall:,.0f} events/s (wall)")
    print(f"event to re-read applied: p50={histogram_quantile(buckets, 0.5):.2f}s "
          f"p99={histogram_quantile(buckets, 0.99):.2f}s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", action="store_true")
    ap.add_argument("--serve")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--owners", type=int, default=500)
    args = ap.parse_args()
    if not args.serve:
        print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    if args.agent:
        run_agent(args)
        return
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        config = Path(tmp) / "config.yml"
        config.write_text(yaml.safe_dump({
            "state": {"path": str(Path(tmp) / "state.db")},
            "webhooks": {"listen_address": f"127.0.0.1:{port}"},
            "sources": [{"name": "fin", "provider": "finicity", "base_url": "http://127.0.0.1:9",
                         "app_key": "k", "partner_id": "p", "partner_secret": SECRET,
                         "webhooks": {}}]}))
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(config)])
        try:
            if hasattr(os, "sched_setaffinity"):
                os.sched_setaffinity(server.pid, {sorted(os.sched_getaffinity(0))[0]})
            url = f"http://127.0.0.1:{port}/webhooks/fin"
            for _ in range(100):
                try:
                    httpx.post(url, content=b"{}", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            latencies = asyncio.run(drive(url, args.events, args.clients, args.owners))
            wall, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
        finally:
            server.terminate()
            server.wait(30)
    q = statistics.quantiles(latencies, n=100)
    print(f"events={args.events} clients={args.clients} owners={args.owners}")
    print(f"wall: {args.events / wall:,.0f} events/s; listener CPU {cpu:.1f}s "
          f"-> {args.events / cpu:,.0f} events per CPU-second (one core)")
    print(f"answer latency p50={q[49] * 1000:.1f} ms p99={q[98] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
