"""What one upstream request costs the agent: CPU per request of a sweep's HTTP client.

Sweeps Finicity and MX (records dropped, no tracker) at each concurrency against two
servers in their own processes: ``bench/plain_upstream.py`` (a threaded standard-library
server, HTTP/1.1 keep-alive) and the built-in sandbox. Prints, per run, the requests made,
the wall time and the CPU per request of the agent and of the server, with the reference
loop time of ``bench/bench_tracker.py`` so that machines can be compared. The machine may
be shared: repeat a run before trusting a difference of less than ~15 %.

Run: ``python bench/bench_client.py [--customers 10000] [--users 1000] [--concurrency 16 64]
[--targets plain sandbox] [--loop asyncio|uvloop]``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_sweep import CountingObserver, cpu_seconds, event_loop_factory
from bench.bench_tracker import reference_loop
from exporter.config import FinicitySourceConfig, MxSourceConfig
from exporter.demo import sandbox_config
from exporter.upstreams import build_source, finicity, mx  # noqa: F401 - imported before timing
from tests.integration.procs import Sandbox


class DropSink:
    """A sweep sink that only counts records: the tracker is not part of this bench."""

    def __init__(self):
        self.records = 0

    async def add(self, records) -> None:
        self.records += len(records)

    def progress(self, done: int, total: int | None) -> None:
        pass


class PlainUpstream:
    """``bench/plain_upstream.py`` as a child process."""

    def __init__(self, customers: int, users: int):
        self.popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("plain_upstream.py")), "--port", "0",
             "--customers", str(customers), "--users", str(users)],
            stdout=subprocess.PIPE, text=True)
        line = self.popen.stdout.readline()
        self.url = line.split()[-1]

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(10)


async def sweep_once(config: FinicitySourceConfig | MxSourceConfig) -> tuple[int, int, float]:
    observer = CountingObserver()
    source = build_source(config, observer, time.time)
    sink = DropSink()
    started = time.perf_counter()
    report = await source.sweep(sink)
    elapsed = time.perf_counter() - started
    await source.aclose()
    assert report.complete, report
    return sum(observer.requests.values()), sink.records, elapsed


def source_configs(url: str, concurrency: int) -> list[FinicitySourceConfig | MxSourceConfig]:
    http = {"max_concurrency": concurrency, "rate_limit_per_second": 1_000_000,
            "rate_limit_burst": 10_000}
    config = sandbox_config(url, state_path=Path("unused.db"), interval=3600, http=http)
    return [FinicitySourceConfig(**config["sources"][0]), MxSourceConfig(**config["sources"][1])]


def run_target(name: str, url: str, server_pid: int, concurrencies: list[int],
               loop: str) -> None:
    for concurrency in concurrencies:
        for config in source_configs(url, concurrency):
            server0, agent0 = cpu_seconds(server_pid), resource.getrusage(resource.RUSAGE_SELF)
            with asyncio.Runner(loop_factory=event_loop_factory(loop)) as runner:
                requests, records, elapsed = runner.run(sweep_once(config))
            agent1 = resource.getrusage(resource.RUSAGE_SELF)
            user, system = agent1.ru_utime - agent0.ru_utime, agent1.ru_stime - agent0.ru_stime
            server = cpu_seconds(server_pid) - server0
            per = 1000 / requests
            print(f"  {name:8} {config.provider:8} {loop:7} c={concurrency:<3} {requests:>7,} requests "
                  f"{records:>7,} records {elapsed:6.1f} s wall  agent {(user + system) * per:5.2f} "
                  f"ms/request (user {user * per:4.2f}, system {system * per:4.2f})  server "
                  f"{server * per:5.2f} ms/request  agent/server {(user + system) / max(server, 1e-9):4.2f}",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--targets", nargs="+", choices=("plain", "sandbox"),
                        default=["plain", "sandbox"])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="the agent's event loop (the sandbox keeps its own)")
    args = parser.parse_args()
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    if "plain" in args.targets:
        plain = PlainUpstream(args.customers, args.users)
        try:
            run_target("plain", plain.url, plain.popen.pid, args.concurrency, args.loop)
        finally:
            plain.stop()
    if "sandbox" in args.targets:
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = Path(tmp_dir)
            scenario = tmp / "scenario.yml"
            scenario.write_text(yaml.safe_dump({"finicity": {"units": args.customers},
                                                "mx": {"units": args.users}}))
            sandbox = Sandbox(tmp, scenario)
            try:
                run_target("sandbox", sandbox.url, sandbox.popen.pid, args.concurrency, args.loop)
            finally:
                sandbox.stop()
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")


if __name__ == "__main__":
    main()
