"""Benchmark of forwarding to the owner shard (numbers for the issue notes; never asserted).

Two listener processes as two shards of one source (``shard: {index: i, count: 2}``,
``webhooks.peers`` listing both): ``bench_webhooks.py --serve``, the real PushService
(uvicorn, the Starlette app, HMAC check, SQLite inbox, processor) with an instant stand-in
source, each pinned to its own CPU. Every event names an owner of shard 1.

- Forwarded events per second on one core: a burst of ``--events`` signed Finicity events
  over ``--clients`` connections to shard 0, which verifies each and forwards it to shard 1;
  events per CPU-second of shard 0 (its own capacity on one core, whatever the owner and
  the load generator cost), beside the same burst posted to shard 1 directly (a delivery
  that needs no forward).
- Added latency of a forward: ``--latency-events`` events one at a time (no queueing),
  directly to shard 1 and to shard 0 in alternating rounds; answer latency p50/p99 of each
  and the difference.

Run: ``python bench/bench_forward.py [--events 10000] [--clients 32]``;
``BENCH_PROFILE=/tmp/prof`` runs shard 0 under cProfile.
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
from bench.bench_webhooks import cpu_seconds, drive_burst  # noqa: E402

SERVE = [sys.executable, str(ROOT / "bench" / "bench_webhooks.py"), "--serve"]

SECRET = "bench-partner-secret"
SHARDS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owners_of(shard: int, n: int) -> list[str]:
    from exporter.sources.sharding import shard_of

    ids = (str(1_000_000 + i) for i in range(100 * n))
    return [o for o in ids if shard_of(o, SHARDS) == shard][:n]


def requests_for(url: str, owners: list[str], first: int, count: int) -> list[bytes]:
    """Signed Finicity ``done`` deliveries as raw HTTP/1.1, event ids ``first`` onwards."""
    parts = urlsplit(url)
    out = []
    for i in range(first, first + count):
        body = json.dumps({"customerId": owners[i % len(owners)], "eventType": "done",
                           "eventId": f"{i}-{i:024x}", "payload": {}},
                          separators=(",", ":")).encode()
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        out.append(f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                   f"Content-Type: application/json\r\nX-Finicity-Signature: {sig}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return out


def start_shards(tmp: Path) -> tuple[list[subprocess.Popen], list[str]]:
    ports = [free_port() for _ in range(SHARDS)]
    peers = [f"http://127.0.0.1:{p}" for p in ports]
    procs = []
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    for i, port in enumerate(ports):
        config = tmp / f"shard-{i}.yml"
        config.write_text(yaml.safe_dump({
            "state": {"path": str(tmp / f"state-{i}.db")},
            "webhooks": {"listen_address": f"127.0.0.1:{port}", "peers": peers},
            "sources": [{"name": "fin", "provider": "finicity", "base_url": "http://127.0.0.1:9",
                         "app_key": "k", "partner_id": "p", "partner_secret": SECRET,
                         "shard": {"index": i, "count": SHARDS}, "webhooks": {}}]}))
        env = {k: v for k, v in os.environ.items() if i == 0 or k != "BENCH_PROFILE"}
        proc = subprocess.Popen([*SERVE, str(config)], env=env)
        if cpus:
            os.sched_setaffinity(proc.pid, {cpus[i % len(cpus)]})
        procs.append(proc)
    for peer in peers:
        for _ in range(100):
            try:
                httpx.post(f"{peer}/webhooks/fin", content=b"{}", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
    return procs, [f"{p}/webhooks/fin" for p in peers]


def burst(url: str, requests: list[bytes], clients: int, pid: int) -> tuple[float, float]:
    """(wall events/s, events per CPU-second of ``pid``)."""
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    asyncio.run(drive_burst(url, requests, clients))
    wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    return len(requests) / wall, len(requests) / cpu


def quantiles_ms(latencies: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--owners", type=int, default=500)
    ap.add_argument("--latency-events", type=int, default=2000)
    args = ap.parse_args()
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    owners = owners_of(1, args.owners)
    with tempfile.TemporaryDirectory() as tmp:
        procs, urls = start_shards(Path(tmp))
        try:
            first, rounds = 0, 10
            chunk = max(1, args.latency_events // rounds)
            answered: dict[str, list[float]] = {"direct to the owner": [], "forwarded": []}
            for url in urls:  # warm-up
                asyncio.run(drive_burst(url, requests_for(url, owners, 10**9 + first, 200), 1))
                first += 200
            for _ in range(rounds):  # alternating, so the machine's drift hits both alike
                for name, url in (("direct to the owner", urls[1]), ("forwarded", urls[0])):
                    _, times = asyncio.run(drive_burst(url, requests_for(url, owners, first,
                                                                         chunk), 1))
                    answered[name] += times
                    first += chunk
            latency = {name: quantiles_ms(times) for name, times in answered.items()}
            rates = {}
            for name, url, pid in (("direct to the owner", urls[1], procs[1].pid),
                                   ("forwarded", urls[0], procs[0].pid)):
                rates[name] = burst(url, requests_for(url, owners, first, args.events),
                                    args.clients, pid)
                first += args.events
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
    print(f"events={args.events} clients={args.clients} owners={args.owners} (all of shard 1)")
    for name, (wall, per_cpu) in rates.items():
        who = "shard 1" if name.startswith("direct") else "shard 0 (the forwarder)"
        print(f"{name}: {wall:,.0f} events/s wall; {per_cpu:,.0f} events per CPU-second of "
              f"{who} (one core)")
    for name, (p50, p99) in latency.items():
        print(f"answer latency, one at a time, {name}: p50={p50:.2f} ms p99={p99:.2f} ms")
    (d50, d99), (f50, f99) = latency["direct to the owner"], latency["forwarded"]
    print(f"added by the forward: p50 +{f50 - d50:.2f} ms, p99 +{f99 - d99:.2f} ms")


if __name__ == "__main__":
    main()
