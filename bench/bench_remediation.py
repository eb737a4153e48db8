"""Benchmarks of the repair loop (numbers for the issue notes; never asserted in tests).

1. A burst of N newly fixable logins (default 100,000), fed as the tracker would (chunks of
   1,000 accounts, ENTERED + BECAME_FIXABLE per account): events folded into episodes per
   second, requests created per second (``evaluate``), and requests delivered per second
   to a real local HTTP receiver (a separate uvicorn process answering 204).
2. Database growth per 1,000,000 episodes with their delivered requests (measured on N and
   scaled, or at N = 1,000,000 with ``--episodes 1000000``).

Run: ``python bench/bench_remediation.py [--episodes 100000] [--concurrency 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.remediation.config import RemediationConfig
from exporter.remediation.loop import RepairLoop

NOW = 1_763_700_000.0
CHUNK = 1000
RECEIVER = """
import uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})
uvicorn.run(app, host="127.0.0.1", port=%d, log_level="warning", access_log=False)
"""


class Event:
    __slots__ = ("account_key", "at", "broken_since", "category", "code", "fixable", "institution",
                 "institution_id", "kind", "login_id", "otp_suspect", "owner_id", "provider",
                 "source")

    def __init__(self, kind: str, i: int):
        self.kind, self.source, self.provider = kind, "fin", "finicity"
        self.account_key, self.owner_id, self.login_id = f"{7000000000 + i}", f"{6000000 + i // 3}", f"{500000 + i}"
        self.institution_id, self.institution = str(100000 + i % 2000), f"Bank {i % 2000}"
        self.code, self.category, self.fixable, self.otp_suspect = "103", "credentials", True, False
        self.broken_since, self.at = NOW, NOW


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(n: int, concurrency: int) -> None:
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER % port])
    try:
        for _ in range(200):
            try:
                httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "state.db"
            cfg = RemediationConfig(enabled=True, endpoint=f"http://127.0.0.1:{port}/fix",
                                    secret="bench", max_concurrency=concurrency,
                                    storm_min=10**9)
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(limits=limits) as client:
                loop = RepairLoop(cfg, db, sources={}, snapshot=lambda: None,
                                  clock=lambda: NOW, client=client)
                loop.sweep_finished("fin", True)
                started = time.perf_counter()
                for lo in range(0, n, CHUNK):
                    chunk = []
                    for i in range(lo, min(lo + CHUNK, n)):
                        chunk += [Event("entered", i), Event("became_fixable", i)]
                    await loop.on_events(chunk)
                await loop.drained()
                folded = time.perf_counter() - started
                started = time.perf_counter()
                await loop.evaluate()
                created = time.perf_counter() - started
                started = time.perf_counter()
                sent = await loop.worker.run_once()
                delivered = time.perf_counter() - started
                states = loop.store.outbox_states()
                await loop.stop()
            size = sum(os.path.getsize(p) for p in Path(tmp).glob("state.db*"))
        print(f"episodes: {n}, delivery concurrency {concurrency}")
        print(f"events folded into episodes: {2 * n / folded:,.0f} events/s ({n / folded:,.0f} logins/s)")
        print(f"requests created: {n / created:,.0f}/s ({created:.1f} s)")
        print(f"requests delivered: {sent / delivered:,.0f}/s ({delivered:.1f} s), outbox {states}")
        print(f"database: {size / 1e6:.1f} MB for {n} episodes = "
              f"{size / n * 1e6 / 1e9:.2f} GB per 1,000,000 episodes")
    finally:
        receiver.terminate()
        receiver.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.episodes, args.concurrency))
