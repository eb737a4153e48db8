"""Benchmark of the webhook listener (numbers for the issue notes; never asserted in tests).

Verified Finicity Connect events per second with dedupe persisted: a real listener process
(uvicorn, the Starlette app, HMAC check, the SQLite inbox with group commit, the processor
coalescing per owner against an instant stand-in source) is pinned to one CPU and driven
over HTTP by ``--clients`` concurrent connections from this process. Reported: wall-clock
events per second, and events per CPU-second of the listener process (its own capacity on
one core, whatever the load generator costs), plus answer latency p50/p99.

With ``--agent``: the real agent (``openfinance-exporter run``, info logging, push on, the
Finicity source only) against the real sandbox, whose every provider answer waits
``--upstream-latency`` (default 50 ms: the sandbox's ``faults.slow``). Events name the
sandbox's customers; each re-read goes to the sandbox over HTTP. ``--rate R --seconds S``
is an open loop, as an aggregator delivers: event ``i`` is due at ``i / R`` whether or not
earlier answers came back, and every latency counts from that due time (a late send is the
listener's fault, no coordinated omission). Without ``--rate``, a closed burst of
``--events`` over ``--clients`` connections (its latency is mostly the burst's own queue).
Per event, from the agent's inbox (``received_at``, ``done_at``): ``done_at`` is stamped
after ``Tracker.apply_records`` returned, i.e. after the snapshot /metrics serves was
swapped in, so it is an upper bound of when /metrics shows the event. ``--probes`` checks
that from outside: a user's fix in the sandbox, its event posted, /metrics scraped every
20 ms until the series change. Also printed: agent and sandbox CPU, the agent's threads,
re-reads per event. ``BENCH_PROFILE=/tmp/prof`` runs the agent under cProfile.

Run: ``python bench/bench_webhooks.py [--events 20000] [--clients 64] [--owners 500]``;
``python bench/bench_webhooks.py --agent --rate 2000 --seconds 20 --concurrency 64``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_tracker import reference_loop  # noqa: E402

SECRET = "bench-partner-secret"


async def serve(config_path: str) -> None:
    """The listener alone: PushService with an instant source (owning its shard) and a
    tracker that drops."""
    from exporter.config import load_config
    from exporter.sources.sharding import in_shard
    from exporter.state.database import StateDatabase
    from exporter.web.server import http_server, serve_until_signal
    from exporter.webhooks.observer import NullWebhookObserver
    from exporter.webhooks.service import PushService

    class Source:
        def __init__(self, cfg):
            self.name, self.provider, self.shard = cfg.name, cfg.provider, cfg.shard

        def owns(self, owner: str) -> bool:
            return in_shard(owner, self.shard)

        async def refresh_owner(self, owner: str) -> list:
            return []

    class Tracker:
        async def apply_records(self, source, provider, records) -> None:
            pass

    settings = load_config(config_path)
    push = PushService(settings.webhooks, settings.sources,
                       {s.name: Source(s) for s in settings.sources},
                       Tracker(), NullWebhookObserver(), StateDatabase(settings.state.path))
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


def cpu_seconds(pid: int, task: int | None = None) -> float:
    stat = f"/proc/{pid}/task/{task}/stat" if task else f"/proc/{pid}/stat"
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of a process."""
    out = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            out[int(task)] = cpu_seconds(pid, int(task))
    return out


async def drive_burst(url: str, requests: list[bytes],
                      clients: int) -> tuple[list[float], list[float]]:
    """Closed loop: ``clients`` keep-alive connections each send their next request as soon
    as the previous one is answered. Plain HTTP/1.1 over asyncio streams: a load generator
    that costs far less CPU than the listener it measures (httpx here cost ~4x the
    listener). Returns each request's send time (wall clock) and answer latency."""
    parts = urlsplit(url)
    sent: list[float] = [0.0] * len(requests)
    answered: list[float] = [0.0] * len(requests)
    todo = iter(range(len(requests)))

    async def worker() -> None:
        async with connection(parts) as send:
            for i in todo:
                sent[i] = time.time()
                await send(requests[i])
                answered[i] = time.time() - sent[i]
    await asyncio.gather(*(worker() for _ in range(clients)))
    return sent, answered


def signed_requests(url: str, events: int, owners: int,
                    names: list[str] | None = None) -> list[bytes]:
    """One signed Finicity ``done`` delivery per event, as raw HTTP/1.1 requests; event
    ``i`` has eventId ``event_id(i)`` and names owner ``i % owners``."""
    parts = urlsplit(url)
    requests = []
    for i in range(events):
        owner = names[i % owners] if names else str(1_000_000 + i % owners)
        body = json.dumps({"customerId": owner, "eventType": "done", "eventId": event_id(i),
                           "payload": {}}, separators=(",", ":")).encode()
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        requests.append(
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/json\r\nX-Finicity-Signature: {sig}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return requests


def event_id(i: int) -> str:
    return f"{i}-{i:024x}"


@contextlib.asynccontextmanager
async def connection(parts: SplitResult) -> AsyncIterator[Callable[[bytes], Awaitable[None]]]:
    """A keep-alive connection to the listener at ``parts``; yields ``send(request)``, which
    exchanges one raw request and stops the bench on any answer but 200."""
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)

    async def send(request: bytes) -> None:
        status = await exchange(reader, writer, request)
        if status != 200:
            raise SystemExit(f"unexpected answer {status}")

    try:
        yield send
    finally:
        writer.close()


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   request: bytes) -> int:
    """Send one request on a keep-alive connection and read its answer; returns the status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


async def drive_open(url: str, requests: list[bytes], rate: float,
                     clients: int) -> tuple[list[float], list[float]]:
    """Open loop: request ``i`` is due at ``start + i / rate`` (as an aggregator delivers,
    whether or not earlier answers came back) and goes out on the first free one of
    ``clients`` keep-alive connections. Returns each event's due time (wall clock, the
    latency origin: a late send counts against the listener, no coordinated omission) and
    its answer latency from that due time."""
    parts = urlsplit(url)
    due: list[float] = [0.0] * len(requests)
    answered: list[float] = [0.0] * len(requests)
    queue: asyncio.Queue[int | None] = asyncio.Queue()

    async def worker() -> None:
        async with connection(parts) as send:
            while (i := await queue.get()) is not None:
                await send(requests[i])
                answered[i] = time.time() - due[i]

    workers = [asyncio.create_task(worker()) for _ in range(clients)]
    start = time.time() + 0.05
    for i in range(len(requests)):
        at = start + i / rate
        delay = at - time.time()
        if delay > 0.001:
            await asyncio.sleep(delay)
        due[i] = at
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return due, answered


def quantiles(values: list[float]) -> str:
    q = statistics.quantiles(values, n=100)
    return f"p50={q[49]:.3f}s p99={q[98]:.3f}s max={max(values):.3f}s"


def inbox_times(db_path: Path) -> dict[str, tuple[float, float | None]]:
    """eventId (the dedupe key without its ``e:``) → (received_at, done_at) from the
    agent's webhook inbox."""
    import sqlite3

    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        return {key: (received, done) for key, received, done in db.execute(
            "SELECT substr(dedupe_key, 3), received_at, done_at FROM webhook_inbox")}
    finally:
        db.close()


SLOW_SANDBOX = "faults: {slow: 1.0, slow_seconds: %s}\n"


def fleet_lines(agent_url: str) -> frozenset[str]:
    """The Finicity source's ``openfinance_accounts`` series as /metrics serves them now."""
    text = httpx.get(f"{agent_url}/metrics", timeout=30).text
    return frozenset(line for line in text.splitlines()
                     if line.startswith("openfinance_accounts{")
                     and 'source="finicity-sandbox"' in line)


class Probes:
    """Event to /metrics, seen from outside: a user of the sandbox fixes a login of an owner
    the load does not name (control API), a signed ``done`` for that owner is posted, and
    /metrics is scraped every 20 ms until the Finicity account series change (nothing else
    changes them: the sandbox's nights stand still). Runs in a thread beside the load."""

    def __init__(self, sandbox_url: str, agent_url: str, hooks_url: str, busy: set[str]):
        self.sandbox_url, self.agent_url, self.hooks_url = sandbox_url, agent_url, hooks_url
        logins = httpx.get(f"{sandbox_url}/sandbox/truth/logins", timeout=60,
                           params={"provider": "finicity"}).json()["logins"]
        self.logins = [x for x in logins if x["fixable"] and x["owner_id"] not in busy]
        self.latencies: list[float] = []

    def one(self, n: int) -> None:
        before = fleet_lines(self.agent_url)
        while self.logins:
            login = self.logins.pop(0)
            fixed = httpx.post(f"{self.sandbox_url}/sandbox/fix", timeout=10, params={
                "provider": "finicity", "owner_id": login["owner_id"],
                "login_id": login["login_id"]}).json()
            if fixed["fixed"]:
                break
        else:
            raise SystemExit("no fixable login left for a probe")
        body = json.dumps({"customerId": login["owner_id"], "eventType": "done",
                           "eventId": f"probe-{n}", "payload": {}}).encode()
        sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        posted = time.time()
        answer = httpx.post(self.hooks_url, content=body, timeout=10, headers={
            "Content-Type": "application/json", "X-Finicity-Signature": sig})
        if answer.status_code != 200:
            raise SystemExit(f"probe answered {answer.status_code}")
        while fleet_lines(self.agent_url) == before:
            if time.time() - posted > 60:
                raise SystemExit("a probe's fix never reached /metrics")
            time.sleep(0.02)
        self.latencies.append(time.time() - posted)

    def run(self, start: float, seconds: float, count: int) -> None:
        for n in range(count):
            time.sleep(max(0.0, start + seconds * (n + 1) / (count + 1) - time.time()))
            self.one(n)


async def with_probes(load, probes: Probes | None, seconds: float, count: int):
    """Run the load (a coroutine) with the probes in a thread beside it."""
    if probes is None:
        return await load
    side = asyncio.get_running_loop().run_in_executor(None, probes.run, time.time(),
                                                       seconds, count)
    result = await load
    await side
    return result


def run_agent(args) -> None:
    """The real agent (info logging, as deployed) and the real sandbox, each upstream
    answer delayed by ``--upstream-latency`` (the sandbox's ``faults.slow``)."""
    from exporter.demo import sandbox_config
    from exporter.sandbox import credentials
    from tests.integration.procs import EXPORTER, Proc, Sandbox, free_port, wait_for

    global SECRET
    SECRET = credentials.FINICITY_PARTNER_SECRET
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        scenario = tmp_path / "scenario.yml"
        scenario.write_text(SLOW_SANDBOX % args.upstream_latency)
        sandbox = Sandbox(tmp_path, scenario, night_seconds=0)
        agent = None
        try:
            hook_port, port = free_port(), free_port()
            state = tmp_path / "state.db"
            cfg = sandbox_config(sandbox.url, state_path=state, interval=86400, jitter=0,
                                 http={"rate_limit_per_second": 5000, "rate_limit_burst": 500,
                                       "max_concurrency": args.concurrency})
            cfg["sources"] = cfg["sources"][:1]  # Finicity only: the events name its customers
            cfg["webhooks"] = {"listen_address": f"127.0.0.1:{hook_port}",
                               "concurrency": args.concurrency}
            cfg["sources"][0]["webhooks"] = {}
            (tmp_path / "agent.yml").write_text(yaml.safe_dump(cfg))
            profile = (["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
                       if os.environ.get("BENCH_PROFILE") else [])
            agent = Proc("agent", [*EXPORTER[:1], *profile, *EXPORTER[1:], "run",
                                   "--config.file", str(tmp_path / "agent.yml"),
                                   "--web.listen-address", f"127.0.0.1:{port}"], tmp_path)
            agent_url = f"http://127.0.0.1:{port}"

            def swept() -> bool:
                text = httpx.get(f"{agent_url}/metrics", timeout=30).text
                return 'openfinance_sweeps_total{result="success",source="finicity-sandbox"} 1' \
                    in text
            wait_for(swept, timeout=300, what="the first sweep", interval=0.25)
            customers = [str(c["id"]) for c in sandbox_customers(sandbox.url)][:args.owners]
            url = f"http://127.0.0.1:{hook_port}/webhooks/finicity-sandbox"
            events = args.events if args.rate is None else int(args.rate * args.seconds)
            requests = signed_requests(url, events, len(customers), customers)
            cpu0 = cpu_seconds(agent.popen.pid), cpu_seconds(sandbox.popen.pid)
            reads0 = accounts_reads(sandbox)
            threads0 = thread_cpu(agent.popen.pid)
            t0 = time.perf_counter()
            probes = None
            if args.rate is None:
                due, answered = asyncio.run(drive_burst(url, requests, args.clients))
            else:
                probes = Probes(sandbox.url, agent_url, url, set(customers))
                due, answered = asyncio.run(with_probes(
                    drive_open(url, requests, args.rate, args.clients), probes, args.seconds,
                    args.probes))
            wall = time.perf_counter() - t0
            cpu1 = cpu_seconds(agent.popen.pid), cpu_seconds(sandbox.popen.pid)
            threads1 = thread_cpu(agent.popen.pid)

            def applied() -> bool:
                return all(done is not None for _r, done in inbox_times(state).values())
            wait_for(applied, timeout=600, what="all events applied", interval=0.25)
            times = inbox_times(state)
            agent_pid = agent.popen.pid
            reads = accounts_reads(sandbox) - reads0
        finally:
            if agent is not None:
                agent.stop(timeout=120)
            sandbox.stop()
    visible = [times[event_id(i)][1] - due[i] for i in range(events)]
    arrival = [times[event_id(i)][0] - due[i] for i in range(events)]
    mode = (f"closed burst of {events} events over {args.clients} connections"
            if args.rate is None else
            f"open loop {args.rate:,.0f} events/s for {args.seconds:.0f} s ({events} events, "
            f"{args.clients} connections)")
    print(f"agent + sandbox answering in {float(args.upstream_latency) * 1000:.0f} ms, "
          f"{len(customers)} owners, concurrency {args.concurrency}: {mode}")
    print(f"sent in {wall:.1f} s: {events / wall:,.0f} events/s accepted; agent CPU "
          f"{cpu1[0] - cpu0[0]:.1f} s, sandbox CPU {cpu1[1] - cpu0[1]:.1f} s")
    main_thread = threads1[agent_pid] - threads0[agent_pid]
    others = sorted((t - threads0.get(tid, 0.0) for tid, t in threads1.items()
                     if tid != agent_pid), reverse=True)
    print(f"  agent threads: event loop {main_thread:.1f} s, others "
          + ", ".join(f"{t:.1f}" for t in others[:4] if t >= 0.05) + " s")
    print(f"re-reads (sandbox account requests): {reads} for {events} events")
    print(f"answer (from due time): {quantiles(answered)}; listener arrival: "
          f"{quantiles(arrival)}")
    print(f"event -> applied (snapshot /metrics serves swapped in): {quantiles(visible)}")
    if probes is not None:
        print("probes (a fix in the sandbox, its event posted, /metrics scraped every 20 ms "
              "until it shows): " + ", ".join(f"{t:.2f}" for t in probes.latencies) + " s")
    half = events // 2
    print(f"  first half {quantiles(visible[:half])}; second half {quantiles(visible[half:])}")


def accounts_reads(sandbox) -> int:
    """Customer-accounts requests the sandbox answered so far."""
    requests = sandbox.stats()["requests"]
    return sum(n for route, n in requests.items() if "accounts" in route)


def sandbox_customers(sandbox_url: str) -> list[dict]:
    from exporter.sandbox import credentials

    headers = {"Finicity-App-Key": credentials.FINICITY_APP_KEY, "Accept": "application/json"}
    token = httpx.post(f"{sandbox_url}/finicity/aggregation/v2/partners/authentication",
                       headers=headers, json={"partnerId": credentials.FINICITY_PARTNER_ID,
                                              "partnerSecret": SECRET}).json()["token"]
    return httpx.get(f"{sandbox_url}/finicity/aggregation/v1/customers",
                     params={"limit": 1000, "start": 1}, timeout=30,
                     headers={**headers, "Finicity-App-Token": token}).json()["customers"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", action="store_true")
    ap.add_argument("--serve")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--owners", type=int, default=500)
    ap.add_argument("--rate", type=float, help="--agent: open loop at this many events/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="--agent --rate: for this long")
    ap.add_argument("--probes", type=int, default=5,
                    help="--agent --rate: fixes followed from the event to /metrics")
    ap.add_argument("--concurrency", type=int, default=16,
                    help="--agent: webhooks.concurrency and the source's http.max_concurrency")
    ap.add_argument("--upstream-latency", default="0.05",
                    help="--agent: seconds the sandbox waits before each answer")
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
            requests = signed_requests(url, args.events, args.owners)
            _sent, latencies = asyncio.run(drive_burst(url, requests, args.clients))
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
