"""Benchmark: webhook inbox commits while a sweep writes, on one state database (numbers for
the issue notes; never asserted in tests).

The inbox and the tracker share the state database's one writer thread: an inbox commit
that arrives during a sweep waits for the chunk being applied. This measures that wait: a
tracker sweeps ``--accounts`` accounts (new attempt times every sweep, as each night, in
chunks of ``--batch``) over and over, while the inbox commits one delivery every
``--every`` seconds (each ``put`` returns once its row is committed, which is when the
listener answers 200). Printed: the put latency p50/p99/max with the database idle and
during the sweeps, and the sweeps' own time with and without the puts.

Run: ``python bench/bench_state_writer.py [--accounts 200000] [--batch 20000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_tracker import reference_loop
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.sources.notices import Delivery
from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import Tracker
from exporter.webhooks.inbox import WebhookInbox

NOW = 1_763_700_000.0


def records(n: int, night: int) -> list[AccountStatus]:
    at = NOW + night * 86400.0
    return [AccountStatus("fin", "finicity", f"{i:08d}", str(i % 40), f"Bank {i % 40}",
                          "0" if i % 10 else "103", at, at if i % 10 else None)
            for i in range(n)]


async def sweep(tracker: Tracker, recs: list[AccountStatus]) -> float:
    started = time.perf_counter()
    session = await tracker.begin("fin", "finicity")
    for i in range(0, len(recs), 1000):
        await session.add(recs[i:i + 1000])
    await session.finish(SweepReport(complete=True))
    return time.perf_counter() - started


async def puts(inbox: WebhookInbox, every: float, stop: asyncio.Event,
               start: int) -> list[float]:
    out, n = [], start
    while not stop.is_set():
        n += 1
        t0 = time.perf_counter()
        await inbox.put("fin", Delivery("unableToConnect", (f"c{n}",), f"dk-{n}", 60.0), NOW)
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(every)
    return out


def summary(latencies: list[float]) -> str:
    s = sorted(latencies)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))] * 1000  # noqa: E731
    return f"n={len(s)} p50={pick(0.5):.1f} ms p99={pick(0.99):.1f} ms max={s[-1] * 1000:.1f} ms"


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = StateDatabase(Path(tmp) / "state.db")
        tracker = Tracker(StateStore(db), clock=lambda: NOW, batch_size=args.batch)
        inbox = WebhookInbox(db)
        await inbox.open()
        await sweep(tracker, records(args.accounts, 0))  # first sighting of every account
        alone = [await sweep(tracker, records(args.accounts, night)) for night in (1, 2)]

        stop = asyncio.Event()
        idle = asyncio.create_task(puts(inbox, args.every, stop, 0))
        await asyncio.sleep(2.0)
        stop.set()
        idle_lat = await idle

        stop = asyncio.Event()
        busy = asyncio.create_task(puts(inbox, args.every, stop, 10**6))
        shared = [await sweep(tracker, records(args.accounts, night)) for night in (3, 4)]
        stop.set()
        busy_lat = await busy
        await inbox.close()
        await tracker.close()
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    print(f"{args.accounts:,} accounts, chunks of {args.batch:,}, a put every "
          f"{args.every * 1000:.0f} ms")
    print(f"  sweep alone:        {min(alone):.2f} s (best of 2)")
    print(f"  sweep with puts:    {min(shared):.2f} s (best of 2)")
    print(f"  put, idle database: {summary(idle_lat)}")
    print(f"  put, during sweeps: {summary(busy_lat)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--every", type=float, default=0.01)
    asyncio.run(main(parser.parse_args()))
