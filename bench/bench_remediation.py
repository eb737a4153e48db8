"""Benchmarks of the repair loop (numbers for the issue notes; never asserted in tests).

1. A burst of N newly fixable logins (default 100,000), fed as the tracker would (chunks of
   1,000 accounts, ENTERED + BECAME_FIXABLE per account): events folded into episodes per
   second, requests created per second (``evaluate``), and requests delivered per second
   to a real local HTTP receiver (a separate uvicorn process answering 204).
2. A sweep while that burst is delivered, on the same SQLite file as the loop (as in the
   agent), against the same sweep with the outbox idle: ``--sweep memory`` (the tracker
   alone, records from memory: the worst case, nothing to wait on) or ``--sweep sandbox``
   (the Finicity source sweeping the sandbox over HTTP, another process, as in
   ``bench_sweep.py``). ``--repeat`` pairs, back to back so that the machine's drift hits
   both alike: a second of the outbox at full speed, the sweep while it delivers, then the
   same sweep with the outbox held (nothing in flight); the median of the pairs' ratios. The delivery rate is printed between,
   during and after the sweeps (during them, the loop paces itself to
   ``sweep_deliveries_per_second``).
3. Database growth per 1,000,000 episodes with their delivered requests (measured on N and
   scaled, or at N = 1,000,000 with ``--episodes 1000000``).
4. What the loop costs a sweep (``--part sweep``): the real tracker sweeps N accounts that
   are all newly at 103 (the burst), with and without the repair loop subscribed
   (``steady=True``), on the same SQLite file as the loop; the sweep's own wall time, and how
   long the loop then needs to fold the queued events.

Run: ``python bench/bench_remediation.py [--episodes 100000] [--concurrency 64]
[--part burst|sweep] [--sweep memory|sandbox] [--transport http11|aiohttp] [--pace 100]``.
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from statistics import median

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_tracker import reference_loop
from exporter.records import AccountStatus
from exporter.remediation.config import RemediationConfig
from exporter.remediation.loop import RepairLoop
from exporter.remediation.observer import NullRemediationObserver
from exporter.sources.base import SweepReport
from exporter.sources.transport import AiohttpTransport
from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import Tracker
from exporter.tracker.events import AccountEvent, EventKind

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


def event(kind: EventKind, i: int) -> AccountEvent:
    """Account ``i`` of a login of its own, newly at 103 (as the tracker emits it)."""
    return AccountEvent(kind, "fin", "finicity", f"{7000000000 + i}", f"{6000000 + i // 3}",
                        f"{500000 + i}", str(100000 + i % 2000), f"Bank {i % 2000}", "103",
                        "credentials", True, False, "0", "ok", NOW, NOW)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Delivered(NullRemediationObserver):
    """Counts delivered requests, so the rate can be read at any moment."""

    def __init__(self):
        self.count = 0

    def fix_request(self, source, provider, kind, result):
        if result == "delivered":
            self.count += 1


Sweep = Callable[[Tracker], Awaitable[float]]


def memory_sweep(n: int) -> Sweep:
    accounts = records(n, "0", 0)

    async def sweep(tracker: Tracker) -> float:
        return await timed_sweep(tracker, accounts)
    return sweep


def sandbox_sweep(url: str, concurrency: int = 16) -> tuple[Sweep, Callable[[], Awaitable]]:
    """The Finicity source sweeping the sandbox (``bench_sweep.py``'s setup), source ``sbx``."""
    from exporter.config import FinicitySourceConfig
    from exporter.sandbox import credentials
    from exporter.sources.base import NullObserver
    from exporter.upstreams import build_source

    config = FinicitySourceConfig(
        name="sbx", provider="finicity", base_url=f"{url}/finicity", customer_type="all",
        app_key=credentials.FINICITY_APP_KEY, partner_id=credentials.FINICITY_PARTNER_ID,
        partner_secret=credentials.FINICITY_PARTNER_SECRET, page_size=1000,
        http={"max_concurrency": concurrency, "rate_limit_per_second": 100000,
              "rate_limit_burst": 1000})
    source = build_source(config, NullObserver(), time.time)

    async def sweep(tracker: Tracker) -> float:
        started = time.perf_counter()
        session = await tracker.begin("sbx", "finicity")
        await session.finish(await source.sweep(session))
        return time.perf_counter() - started
    return sweep, source.aclose


async def main(n: int, concurrency: int, transport: str, sweep_kind: str, pace: float,
               customers: int, repeat: int = 3, gap_seconds: float = 1.0) -> None:
    port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER % port])
    sandbox = None
    try:
        for _ in range(200):
            try:
                httpx.post(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "state.db"
            close_source = None
            if sweep_kind == "sandbox":
                from tests.integration.procs import Sandbox

                scenario = Path(tmp) / "scenario.yml"
                scenario.write_text(yaml.safe_dump({"finicity": {"units": customers},
                                                    "mx": {"units": 10}}))
                sandbox = Sandbox(Path(tmp), scenario)
                sweep, close_source = sandbox_sweep(sandbox.url)
                size = f"the sandbox's {customers:,} customers"
            else:
                sweep = memory_sweep(n)
                size = f"{n:,} unchanged accounts from memory"
            extra = {"sweep_deliveries_per_second": pace} if (
                "sweep_deliveries_per_second" in RemediationConfig.model_fields) else {}
            cfg = RemediationConfig(enabled=True, endpoint=f"http://127.0.0.1:{port}/fix",
                                    secret="bench", max_concurrency=concurrency,
                                    storm_min=10**9, **extra)
            client = None
            if transport == "aiohttp":  # what deliveries used before: aiohttp under httpx
                client = httpx.AsyncClient(
                    transport=AiohttpTransport(max_connections=concurrency),
                    follow_redirects=False)
            counted = Delivered()
            database = StateDatabase(db)  # one owner of the file, as in the agent
            loop = RepairLoop(cfg, database, sources={}, snapshot=lambda: None,
                              clock=lambda: NOW, client=client, observer=counted)
            loop.sweep_finished("fin", True)
            started = time.perf_counter()
            for lo in range(0, n, CHUNK):
                chunk = []
                for i in range(lo, min(lo + CHUNK, n)):
                    chunk += [event(EventKind.ENTERED, i), event(EventKind.BECAME_FIXABLE, i)]
                await loop.on_events(chunk)
            await loop.drained()
            folded = time.perf_counter() - started
            started = time.perf_counter()
            await loop.evaluate()
            created = time.perf_counter() - started
            tracker = Tracker(StateStore(database), clock=lambda: NOW)  # the same file, as the agent
            await tracker.load({"fin": "finicity", "sbx": "finicity"})
            tracker.subscribe(loop.on_events, steady=True)
            await sweep(tracker)  # first: inserts; the next ones compare
            await sweep(tracker)  # warm
            await loop.drained()
            # Pairs, so that the machine's drift hits both sides alike: a second at full
            # speed, a sweep while the outbox delivers (paced as in the agent), then the same
            # sweep with the outbox held (nothing in flight, nothing settled).
            held = False
            paced = loop.worker.pace
            loop.worker.pace = lambda: 0.0 if held else paced()
            started = time.perf_counter()
            sending = asyncio.create_task(loop.worker.run_once())
            sent = 0
            quiet, busy, during, between = [], [], [], []
            for _ in range(repeat):
                at_gap, gap = counted.count, time.perf_counter()
                await asyncio.sleep(gap_seconds)
                between.append((counted.count - at_gap) / (time.perf_counter() - gap))
                at_sweep, sweep_started = counted.count, time.perf_counter()
                loop.sweep_started("sbx")
                busy.append(await sweep(tracker))
                loop.sweep_finished("sbx", True)
                during.append((counted.count - at_sweep) / (time.perf_counter() - sweep_started))
                held = True
                await asyncio.sleep(0.5)  # requests in flight finish; the rest wait their turn
                quiet.append(await sweep(tracker))
                held = False
                if sending.done():  # it stops at a batch boundary while held
                    sent += sending.result()
                    sending = asyncio.create_task(loop.worker.run_once())
            at_end, ended = counted.count, time.perf_counter()
            sent += await sending
            finished = time.perf_counter()
            after = (counted.count - at_end) / max(finished - ended, 1e-9)
            delivered = finished - started
            await loop.drained()
            await tracker.close()
            states = loop.store.outbox_states()
            await loop.stop()
            if client is not None:
                await client.aclose()
            if close_source is not None:
                await close_source()
            size_db = sum(os.path.getsize(p) for p in Path(tmp).glob("state.db*"))
        print(f"episodes: {n}, delivery concurrency {concurrency}, transport {transport}, "
              f"paced to {extra.get('sweep_deliveries_per_second', 'unpaced')}/s during a sweep")
        print(f"events folded into episodes: {2 * n / folded:,.0f} events/s ({n / folded:,.0f} logins/s)")
        print(f"requests created: {n / created:,.0f}/s ({created:.1f} s)")
        rates = ", ".join(f"{r:,.0f}" for r in between)
        print(f"requests delivered: {sent / delivered:,.0f}/s overall ({delivered:.1f} s); "
              f"{rates}/s between sweeps, {median(during):,.0f}/s during them "
              f"({', '.join(f'{r:,.0f}' for r in during)}), {after:,.0f}/s after the last; "
              f"outbox {states}")
        ratios = sorted(b / q for b, q in zip(busy, quiet, strict=True))
        print(f"paired (busy ÷ held, each pair back to back): median "
              f"{(median(ratios) - 1) * 100:+.1f} %, range {(ratios[0] - 1) * 100:+.1f} % to "
              f"{(ratios[-1] - 1) * 100:+.1f} %")
        print(f"sweep of {size}, median of {repeat}: {median(quiet):.2f} s with the outbox held "
              f"({', '.join(f'{q:.2f}' for q in quiet)}), {median(busy):.2f} s while it delivers "
              f"({', '.join(f'{b:.2f}' for b in busy)}): "
              f"{(median(busy) / median(quiet) - 1) * 100:+.1f} %")
        print(f"database: {size_db / 1e6:.1f} MB for {n} episodes (+ the swept accounts)")
    finally:
        if sandbox is not None:
            sandbox.stop()
        receiver.terminate()
        receiver.wait()


def records(n: int, code: str, night: int, share: float = 1.0) -> list[list[AccountStatus]]:
    """``n`` accounts; every ``1/share``-th at ``code``, the others at 0."""
    attempt = NOW + night * 86400.0
    every = max(1, round(1 / share))
    out, chunk = [], []
    for i in range(n):
        code_i = code if i % every == 0 else "0"
        chunk.append(AccountStatus("fin", "finicity", f"{7000000000 + i}", str(100000 + i % 2000),
                                   f"Bank {i % 2000}", code_i, attempt,
                                   attempt if code_i == "0" else NOW, f"{6000000 + i // 3}",
                                   f"{500000 + i}"))
        if len(chunk) == CHUNK:
            out.append(chunk)
            chunk = []
    return out + ([chunk] if chunk else [])


async def timed_sweep(tracker: Tracker, chunks: list[list[AccountStatus]]) -> float:
    started = time.perf_counter()
    session = await tracker.begin("fin", "finicity")
    for chunk in chunks:
        await session.add(chunk)
    await session.finish(SweepReport(complete=True))
    return time.perf_counter() - started


async def one_sweep(mode: str, ok: list, broken: list) -> tuple[float, float]:
    """The burst sweep's seconds with ``mode`` none / noop (a subscriber that does nothing:
    the tracker's own cost of events) / loop; and the loop's folding left after it."""
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "state.db"
        clock = [NOW]
        database = StateDatabase(db)
        tracker = Tracker(StateStore(database), clock=lambda: clock[0])
        await tracker.load({"fin": "finicity"})
        loop = None
        if mode == "noop":
            async def nothing(events) -> None:
                pass
            tracker.subscribe(nothing, steady=True)
        elif mode == "loop":
            cfg = RemediationConfig(enabled=True, endpoint="http://127.0.0.1:9/", secret="bench")
            loop = RepairLoop(cfg, database, sources={}, snapshot=lambda: tracker.snapshot,
                              clock=lambda: clock[0])
            tracker.subscribe(loop.on_events, steady=True)
        await timed_sweep(tracker, ok)
        if loop is not None:
            loop.sweep_finished("fin", True)
            await loop.drained()
        clock[0] += 86400.0
        swept = await timed_sweep(tracker, broken)
        drained = 0.0
        if loop is not None:
            started = time.perf_counter()
            await loop.drained()
            drained = time.perf_counter() - started
            await loop.stop()
        await tracker.close()
        return swept, drained


async def sweep_cost(n: int, share: float = 1.0) -> None:
    """``share`` of ``n`` accounts newly at 103 (1.0: the burst)."""
    ok, broken = records(n, "0", 0), records(n, "103", 1, share)
    alone, _ = await one_sweep("none", ok, broken)
    noop, _ = await one_sweep("noop", ok, broken)
    with_loop, drain = await one_sweep("loop", ok, broken)
    print(f"sweep of {n} accounts, {share:.0%} newly at 103: {alone:.2f} s alone; {noop:.2f} s with a "
          f"subscriber that does nothing (the tracker building events, "
          f"{(noop / alone - 1) * 100:+.0f} %); {with_loop:.2f} s with the repair loop "
          f"({(with_loop / noop - 1) * 100:+.0f} % on top), which then needed {drain:.2f} s more "
          f"to fold the queued events")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--part", choices=("all", "sweep", "burst"), default="all")
    parser.add_argument("--sweep", choices=("memory", "sandbox"), default="memory",
                        help="the sweep timed while the burst is delivered")
    parser.add_argument("--customers", type=int, default=20_000,
                        help="the sandbox's Finicity customers (--sweep sandbox)")
    parser.add_argument("--transport", choices=("http11", "aiohttp"), default="http11",
                        help="deliveries through the loop's own pool or aiohttp under httpx")
    parser.add_argument("--pace", type=float, default=100.0,
                        help="remediation.sweep_deliveries_per_second")
    parser.add_argument("--repeat", type=int, default=3,
                        help="sweeps timed each way (medians compared)")
    args = parser.parse_args()
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    if args.part in ("all", "sweep"):
        asyncio.run(sweep_cost(args.episodes))
        asyncio.run(sweep_cost(args.episodes * 10, 0.01))
    if args.part in ("all", "burst"):
        asyncio.run(main(args.episodes, args.concurrency, args.transport, args.sweep, args.pace,
                         args.customers, args.repeat))
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
