"""A full sweep of a large fleet against the local sandbox, over real HTTP on loopback.

The sandbox runs as its own process (``openfinance-exporter sandbox``); the Finicity source,
the agent's upstream metrics and the tracker run here. Reports accounts/s, requests/s, peak RSS, the agent's CPU time
against the sandbox's, and the number of upstream requests next to the minimum a sweep
needs: customer pages + one accounts call per customer + uncached institution lookups +
token calls.

Run: ``python bench/bench_sweep.py [--customers 100000] [--loop asyncio|uvloop]`` (the issue's size; ~250,000
accounts). Smaller runs give the same per-request picture faster.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_tracker import reference_loop
from exporter.config import FinicitySourceConfig
from exporter.metrics import AgentMetrics
from exporter.sandbox import credentials
from exporter.sources.base import NullObserver
from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import Tracker
from exporter.upstreams import build_source
from tests.integration.procs import Sandbox


class CountingObserver(NullObserver):
    """Counts requests per route and passes every event on to ``forward`` (the agent's
    metrics in ``bench_sweep``, so that their cost per request is in the agent's CPU)."""

    def __init__(self, forward=None):
        self.requests: dict[str, int] = {}
        self.forward = forward or NullObserver()

    def request(self, source, endpoint, status_code, duration):
        self.requests[endpoint] = self.requests.get(endpoint, 0) + 1
        self.forward.request(source, endpoint, status_code, duration)

    def retry(self, source, reason):
        self.forward.retry(source, reason)

    def invalid_record(self, source, reason):
        self.forward.invalid_record(source, reason)

    def auth_failure(self, source):
        self.forward.auth_failure(source)


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """asyncio's loop (what the agent runs on) or uvloop's (``pip install uvloop``), to compare."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks


async def sweep(url: str, tmp: Path, concurrency: int, page_size: int) -> tuple:
    observer = CountingObserver(AgentMetrics(CollectorRegistry()))
    config = FinicitySourceConfig(
        name="bench", provider="finicity", base_url=f"{url}/finicity", customer_type="all",
        app_key=credentials.FINICITY_APP_KEY, partner_id=credentials.FINICITY_PARTNER_ID,
        partner_secret=credentials.FINICITY_PARTNER_SECRET, page_size=page_size,
        http={"max_concurrency": concurrency, "rate_limit_per_second": 100000,
              "rate_limit_burst": 1000})
    source = build_source(config, observer, time.time)
    tracker = Tracker(StateStore(StateDatabase(tmp / "state.db")), clock=time.time)
    session = await tracker.begin("bench", "finicity")
    started = time.perf_counter()
    report = await source.sweep(session)
    await session.finish(report)
    elapsed = time.perf_counter() - started
    await source.aclose()
    return elapsed, report, session.records, observer.requests, tracker


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the agent's event loop (the sandbox keeps its own)")
    args = parser.parse_args()
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        scenario = tmp / "scenario.yml"
        scenario.write_text(yaml.safe_dump({"finicity": {"units": args.customers},
                                            "mx": {"units": 10}}))
        sandbox = Sandbox(tmp, scenario)
        try:
            state = httpx.get(f"{sandbox.url}/sandbox/state", timeout=120).json()
            fleet = state["fleet"]["finicity"]
            institutions = len(fleet["institutions"])
            sandbox_cpu0 = cpu_seconds(sandbox.popen.pid)
            self_cpu0 = time.process_time()
            with asyncio.Runner(loop_factory=event_loop_factory(args.loop)) as runner:
                elapsed, report, records, requests, _tracker = runner.run(
                    sweep(sandbox.url, tmp, args.concurrency, args.page_size))
            agent_cpu = time.process_time() - self_cpu0
            sandbox_cpu = cpu_seconds(sandbox.popen.pid) - sandbox_cpu0
        finally:
            sandbox.stop()
    customers = report.units_total
    total = sum(requests.values())
    minimum = math.ceil(customers / args.page_size) + customers + institutions + 1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"loop: {args.loop}")
    print(f"sweep of {customers:,} customers / {records:,} accounts "
          f"(complete={report.complete}, failed={report.units_failed}) in {elapsed:.1f} s")
    print(f"  accounts/s: {records / elapsed:,.0f}   requests/s: {total / elapsed:,.0f}")
    print(f"  requests: {total:,} (minimum {minimum:,} = pages + one per customer + "
          f"{institutions} institutions + 1 token)")
    for endpoint, n in sorted(requests.items()):
        print(f"    {n:>9,}  {endpoint}")
    print(f"  agent CPU {agent_cpu:.1f} s vs sandbox CPU {sandbox_cpu:.1f} s; "
          f"agent peak RSS {peak:.0f} MB")
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")


if __name__ == "__main__":
    main()
