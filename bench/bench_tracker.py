"""Benchmarks of the agent core (numbers for the issue notes; never asserted in tests).

1. Tracker + aggregation throughput with state on disk, in records per second of the
   tracker's own time (building the input records is not counted): a first sweep (every
   account new), a nightly sweep (every account has a new attempt, a share changes code)
   and a re-poll (the same attempts seen again), each ending with the aggregation that
   publishes the snapshot. Two key shapes: increasing numeric ids (Finicity accounts) and
   random guids (MX members), each swept in the same page order every night.
2. /metrics with ~50,000 fleet series: our cached exposition (first scrape after a sweep,
   and the following scrapes) against the naive prometheus_client approach
   (``Gauge.labels(...).set(...)`` for the same series, then ``generate_latest``).
3. Resident memory per tracked account beyond the baseline, at 1,000,000 accounts.

Every ``--consent-every``-th account (default 10; 0: none) has a Finicity consent end, spread
over a year, renewed (a year later) on the churn night for the accounts whose code moves.

Run: ``python bench/bench_tracker.py [--accounts 1000000] [--series 50000] [--keys both]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.metrics import build_metrics
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import Tracker

NOW = 1_763_700_000.0
DAY = 86400.0
CODES = ["0"] * 40 + ["103", "108", "185", "187", "910", "905", "913", "945", "102", "1234567"]
CHUNK = 1000  # what a source hands the tracker at a time (a few pages of accounts)


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def account_key(i: int, shape: str) -> str:
    if shape == "numeric":
        return str(6_000_000_000 + i)
    digest = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=16).hexdigest()
    return f"MBR-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"


def chunks(n: int, night: float, shape: str, change_every: int = 20,
           institutions: int = 400, consent_every: int = 10):
    """The sweep's records, a chunk at a time: night 0 sees every account for the first
    time, 0.5 re-polls night 0's attempts, later nights have new attempts and every
    ``change_every``-th account gets another code."""
    attempt = NOW + int(night) * DAY - 3600
    batch: list[AccountStatus] = []
    for i in range(n):
        moved = int(night) if i % change_every == 0 else 0
        code = CODES[(i * 7 + moved) % len(CODES)]
        consent = None
        if consent_every and i % consent_every == 0:
            consent = NOW + (30 + i % 365) * DAY + (365 * DAY if moved and night >= 2 else 0)
        batch.append(AccountStatus("fin", "finicity", account_key(i, shape), str(i % institutions),
                                   f"Bank {i % institutions}", code, attempt,
                                   NOW - DAY if code != "0" else attempt, consent_end=consent))
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


async def sweep(tracker: Tracker, n: int, night: float, shape: str,
                change_every: int = 20, consent_every: int = 10) -> tuple[float, float]:
    """Seconds spent in the tracker (session calls and the final publish) for one sweep:
    wall time, and CPU time of the whole process meanwhile (all threads; the input is built
    outside these windows). On a shared machine the CPU time is the steadier of the two."""
    spent = cpu = 0.0
    t, c = time.perf_counter(), time.process_time()
    session = await tracker.begin("fin", "finicity")
    spent, cpu = spent + time.perf_counter() - t, cpu + time.process_time() - c
    for batch in chunks(n, night, shape, change_every, consent_every=consent_every):
        t, c = time.perf_counter(), time.process_time()
        await session.add(batch)
        spent, cpu = spent + time.perf_counter() - t, cpu + time.process_time() - c
    t, c = time.perf_counter(), time.process_time()
    await session.finish(SweepReport(complete=True))
    return spent + time.perf_counter() - t, cpu + time.process_time() - c


async def bench_tracker(n: int, shape: str, batch_size: int, consent_every: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        gc.collect()
        base = rss_bytes()
        clock = [NOW]
        store = StateStore(StateDatabase(Path(tmp) / "state.db"))
        tracker = Tracker(store, clock=lambda: clock[0], batch_size=batch_size)
        first = await sweep(tracker, n, 0, shape, consent_every=consent_every)
        repoll = await sweep(tracker, n, 0.5, shape, consent_every=consent_every)
        clock[0] += DAY
        nightly = await sweep(tracker, n, 1, shape, consent_every=consent_every)
        clock[0] += DAY
        churn = await sweep(tracker, n, 2, shape, change_every=3, consent_every=consent_every)
        gc.collect()
        used = rss_bytes() - base
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        snap = tracker.snapshot.sources["fin"]
        size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        print(f"tracker: {n:,} accounts on disk, {shape} keys, {CHUNK:,} records per add(), "
              f"batches of {batch_size:,}, consent end on every {consent_every or 'no'}th; "
              f"reference loop now {reference_loop():.2f} s")
        for label, (t, c) in (("first sweep (all new)", first),
                              ("re-poll (same attempts)", repoll),
                              ("night (new attempts, 5% new codes)", nightly),
                              ("churn (new attempts, 33% new codes)", churn)):
            print(f"  {label:36s} {t:6.2f} s = {n / t:>9,.0f} records/s "
                  f"(CPU {c:6.2f} s = {n / c:>9,.0f} records/s)")
        print(f"  consent: {len(snap.consent):,} institutions, "
              f"{len(tracker.fleet('fin').consent):,} (institution, day) counts")
        print(f"  series: {len(snap.accounts):,} account series, "
              f"{len(snap.transitions):,} transition series; state files {size / 1e6:.0f} MB")
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
    expo = build_metrics(lambda: snap, clock=time.time).exposition

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


def reference_loop() -> float:
    """Seconds for a fixed pure-Python loop: how fast this machine runs Python today."""
    t = time.perf_counter()
    sum(i * i for i in range(10_000_000))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--series", type=int, default=50_000)
    parser.add_argument("--keys", choices=("numeric", "guid", "both"), default="both")
    parser.add_argument("--skip-exposition", action="store_true")
    parser.add_argument("--batch-size", type=int, default=Tracker.batch_size_default)
    parser.add_argument("--consent-every", type=int, default=10)
    args = parser.parse_args()
    if not args.skip_exposition:
        print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
        bench_exposition(args.series)
    if args.keys != "both":
        asyncio.run(bench_tracker(args.accounts, args.keys, args.batch_size, args.consent_every))
        return
    for shape in ("numeric", "guid"):  # each in a fresh process: honest memory baselines
        subprocess.run([sys.executable, __file__, "--skip-exposition", "--keys", shape,
                        "--accounts", str(args.accounts), "--batch-size", str(args.batch_size),
                        "--consent-every", str(args.consent_every)],
                       check=True)


if __name__ == "__main__":
    main()
