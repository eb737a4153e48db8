"""Benchmarks of the agent core (numbers for the issue notes; never asserted in tests).

1. Tracker + aggregation throughput with state on disk: records per second for a first
   sweep (inserts) and a second sweep (updates with transitions), including the final
   aggregation that publishes the snapshot.
2. /metrics with ~50,000 fleet series: our cached exposition (first scrape after a sweep,
   and the following scrapes) against the naive prometheus_client approach
   (``Gauge.labels(...).set(...)`` for the same series, then ``generate_latest``).
3. Resident memory per tracked account beyond the baseline, at 1,000,000 accounts.

Run: ``python bench/bench_tracker.py [--accounts 1000000] [--series 50000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.catalog import Catalog
from exporter.metrics import AgeCollector, AgentMetrics, Exposition, FleetCollector
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state import StateStore
from exporter.tracker import Tracker

NOW = 1_763_700_000.0
CODES = [0] * 40 + [103, 108, 185, 187, 910, 905, 913, 945, 102, 1234567]


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def records(n: int, night: int, institutions: int = 400):
    for i in range(n):
        code = CODES[(i * 7 + night * (i % 3)) % len(CODES)]
        yield AccountStatus("fin", "finicity", f"{i:010d}", str(i % institutions),
                            f"Bank {i % institutions}", code, NOW + night * 86400 - 3600,
                            NOW - 86400 if code else NOW + night * 86400 - 3600)


async def sweep(tracker: Tracker, n: int, night: int, chunk: int = 5000) -> float:
    started = time.perf_counter()
    session = tracker.begin("fin", "finicity")
    batch: list[AccountStatus] = []
    for rec in records(n, night):
        batch.append(rec)
        if len(batch) == chunk:
            session.add(batch)
            batch = []
    session.add(batch)
    await session.finish(SweepReport(complete=True))
    return time.perf_counter() - started


async def bench_tracker(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        base = rss_bytes()
        clock = [NOW]
        store = StateStore(Path(tmp) / "state.db")
        tracker = Tracker(store, clock=lambda: clock[0])
        t1 = await sweep(tracker, n, 0)
        clock[0] += 86400
        t2 = await sweep(tracker, n, 1)
        gc.collect()
        used = rss_bytes() - base
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        snap = tracker.snapshot.sources["fin"]
        print(f"tracker: {n:,} accounts on disk")
        print(f"  first sweep (insert):  {t1:6.2f} s  = {n / t1:>9,.0f} records/s")
        print(f"  second sweep (update): {t2:6.2f} s  = {n / t2:>9,.0f} records/s")
        print(f"  series: {len(snap.accounts):,} account series, "
              f"{len(snap.transitions):,} transition series")
        print(f"  resident beyond baseline: {used / 1e6:.1f} MB = {used / n:.0f} bytes/account "
              f"(process peak RSS {peak / 1e6:.0f} MB)")
        store.close()


def bench_exposition(series: int) -> None:
    institutions = series // 25
    snapshot_source = []
    for i in range(institutions):
        for c in range(25):
            snapshot_source.append((str(1000 + i), f"Institution {i}", str(100 + c),
                                    "institution", 3))
    from exporter.tracker import Snapshot, SourceAggregate

    snap = Snapshot(1, {"fin": SourceAggregate("fin", "finicity", accounts=tuple(snapshot_source))})
    fleet, live = CollectorRegistry(), CollectorRegistry()
    AgentMetrics(live)
    fleet.register(FleetCollector(lambda: snap, Catalog.default()))
    live.register(AgeCollector(lambda: snap, time.time))
    expo = Exposition(fleet, live, lambda: snap.version)

    t = time.perf_counter()
    first = expo.render()[0]
    first_s = time.perf_counter() - t
    runs = 50
    t = time.perf_counter()
    for _ in range(runs):
        expo.render()
    cached_s = (time.perf_counter() - t) / runs
    t = time.perf_counter()
    for _ in range(runs):
        expo.render("", "gzip")
    gz_s = (time.perf_counter() - t) / runs

    naive = CollectorRegistry()
    g = Gauge("openfinance_accounts", "h", ["source", "provider", "institution_id",
                                            "institution", "code", "category"], registry=naive)
    t = time.perf_counter()
    for inst_id, inst, code, cat, n in snapshot_source:
        g.labels("fin", "finicity", inst_id, inst, code, cat).set(n)
    set_s = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(5):
        generate_latest(naive)
    naive_s = (time.perf_counter() - t) / 5

    print(f"/metrics: {len(snapshot_source):,} fleet series, {len(first) / 1e6:.1f} MB text")
    print(f"  ours, first scrape after a sweep (render + cache): {first_s * 1000:7.1f} ms")
    print(f"  ours, later scrapes (cached fleet + live part):    {cached_s * 1000:7.2f} ms")
    print(f"  ours, later scrapes, gzip:                         {gz_s * 1000:7.2f} ms")
    print(f"  naive Gauge.labels().set() for all series:         {set_s * 1000:7.1f} ms")
    print(f"  naive generate_latest per scrape:                  {naive_s * 1000:7.1f} ms")
    print(f"  ratio naive scrape / ours cached scrape: {naive_s / cached_s:,.0f}x; "
          f"naive scrape / ours first scrape: {naive_s / first_s:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=50_000)
    args = parser.parse_args()
    bench_exposition(args.series)
    asyncio.run(bench_tracker(args.accounts))


if __name__ == "__main__":
    main()
