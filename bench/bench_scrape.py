"""Benchmark of a real scrape (numbers for the issue notes; never asserted in tests).

The agent's own wiring (``Agent``: tracker on a state database in a temporary directory,
metrics, institution health, the metrics listener under uvicorn on a free port) serves a
fleet of ``--institutions`` institutions over two sources (``fin``: Finicity, 60 %; ``mx``:
MX), Zipf-sized (a few big banks, a long tail of small ones), after two sweeps each (so that
transitions exist), with institution health filled in as in production: a home page per
institution (keys), declared statuses for the Finicity ones, the refresh lag per institution
read from the state database. The listener runs in its own thread and event loop, as in the
agent; this thread scrapes it over real HTTP as Prometheus 2.x asks (``Accept:
application/openmetrics-text...``, ``Accept-Encoding: gzip``) and times, per scrape, the render
inside the server (wall and CPU time of ``Exposition.render``), the answer's headers at the
client (server time plus a loopback round trip) and its last byte.

Measured: a scrape with nothing changed (the median and p90 of ``--repeat`` scrapes); the
first scrape after a one-customer push (``Tracker.apply_records`` of two accounts of one
customer at one institution, as a webhook re-read applies them, at a broken code so that the
push changes the institution's counts; median of ``--repeat`` rounds); the first scrape
after a full sweep of ``fin`` (every account re-read, 5 % of them at another code); and the
first scrape after the refresh lag per institution was re-read. ``--funnels``: how many
(institution, code) pairs the repair loop's funnel counts in the live part (self-metrics,
rendered on every scrape).
The sweep runner renders ahead after a sweep (``on_snapshot``); this bench does not, so the
sweep's row is what a scrape costs when it comes first.

Run: ``python bench/bench_scrape.py [--institutions 5000] [--repeat 15] [--funnels 300]
[--text]``;
``BENCH_PYSPY=/tmp/scrape.svg`` records the scrapes with py-spy (if installed; a ``.txt``
name writes collapsed stacks).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.openmetrics import exposition as openmetrics

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_tracker import reference_loop  # noqa: E402
from exporter.agent import Agent  # noqa: E402
from exporter.config import Settings  # noqa: E402
from exporter.health.directory import InstitutionFacts  # noqa: E402
from exporter.records import AccountStatus  # noqa: E402
from exporter.routing.advisor import Advisor  # noqa: E402
from exporter.sources.base import SweepReport  # noqa: E402
from exporter.sources.institution import DeclaredStatus  # noqa: E402

PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0;q=0.5,"
                     "application/openmetrics-text;version=0.0.1;q=0.4,"
                     "text/plain;version=0.0.4;q=0.3,*/*;q=0.2")
HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
DAY = 86400.0
FIN_CODES = ["0"] * 40 + ["103", "108", "185", "187", "910", "905", "913", "945", "102", "580"]
MX_CODES = (["CONNECTED"] * 40 + ["CHALLENGED", "DENIED", "PREVENTED", "DEGRADED", "FAILED",
                                  "REJECTED", "EXPIRED", "IMPEDED", "DISCONNECTED", "IMPAIRED"])
WORDS = ("First", "National", "Community", "Savings", "Federal", "Credit", "Union", "Trust",
         "Farmers", "Merchants", "Citizens", "Peoples", "Valley", "River", "Mountain", "Bay")


class Fleet:
    """The institutions and accounts of both sources, deterministic for a seed."""

    def __init__(self, institutions: int, seed: int = 7):
        rng = random.Random(seed)
        self.sources = {"fin": ("finicity", FIN_CODES), "mx": ("mx", MX_CODES)}
        n_fin = institutions * 3 // 5
        self.institutions: dict[str, list[tuple[str, str, int]]] = {"fin": [], "mx": []}
        for rank in range(institutions):
            source = "fin" if rank < n_fin else "mx"
            local = rank if source == "fin" else rank - n_fin
            inst_id = str(100_000 + local) if source == "fin" else f"mx_bank_{local:05d}"
            words = rng.sample(WORDS, 3)
            name = f"{words[0]} {words[1]} {words[2]} Bank & Trust {local}"
            size = max(4, int(2500 / (local + 1) ** 0.9))
            self.institutions[source].append((inst_id, name, size))
        self.accounts: dict[str, list[tuple[str, str, str, int]]] = {}
        for source, insts in self.institutions.items():
            rows = []
            for inst_id, name, size in insts:
                for k in range(size):
                    rows.append((f"{source}-{inst_id}-{k}", inst_id, name, rng.randrange(1 << 30)))
            self.accounts[source] = rows

    def records(self, source: str, night: int, now: float, changed: float = 0.05):
        """One sweep's records; from night 1 on, ``changed`` of the accounts at another code."""
        provider, codes = self.sources[source]
        attempt = now - 3600
        out = []
        for key, inst_id, name, salt in self.accounts[source]:
            moved = night if night and (salt % 1000) < changed * 1000 else 0
            code = codes[(salt + moved * 7) % len(codes)]
            ok = code in ("0", "CONNECTED")
            success = attempt if ok else attempt - (salt % 10) * DAY
            out.append(AccountStatus(source, provider, key, inst_id, name, code, attempt,
                                     success, f"owner-{salt % 50_000}", f"login-{key}"))
        return out


async def sweep(agent: Agent, source: str, records: list[AccountStatus]) -> None:
    provider = records[0].provider
    session = await agent.tracker.begin(source, provider)
    for i in range(0, len(records), 1000):
        await session.add(records[i:i + 1000])
    await session.finish(SweepReport(complete=True))


def fill_directory(agent: Agent, fleet: Fleet, now: float) -> None:
    statuses = ("online",) * 30 + ("maintenance", "offline")
    for source, insts in fleet.institutions.items():
        provider = fleet.sources[source][0]
        for i, (inst_id, name, _size) in enumerate(insts):
            declared = None
            if provider == "finicity":
                s = statuses[i % len(statuses)]
                declared = DeclaredStatus((("institution", s), ("overall", s)))
            agent.health.directory.record(InstitutionFacts(
                source, provider, inst_id, name, f"https://www.{source}{i}.example-bank.com",
                declared, now))


ROUTES = {"fin": ("/aggregation/v2/partners/authentication", "/aggregation/v1/customers",
                  "/aggregation/v1/customers/{customerId}/accounts",
                  "/aggregation/v1/customers/{customerId}/accounts/simple",
                  "/institution/v2/institutions/{institutionId}"),
          "mx": ("/users", "/users/{user_guid}/members", "/institutions/{institution_code}",
                 "/users/{user_guid}/widget_urls")}


def fill_self_metrics(agent: Agent, fleet: Fleet, funnels: int) -> None:
    """The live part as an agent with push and the repair loop has it after a while:
    requests per route and status, sweeps, webhooks, fix requests, and the repair funnel of
    ``funnels`` (institution, code) pairs."""
    m = agent.metrics.agent
    rng = random.Random(3)
    for source, (provider, codes) in fleet.sources.items():
        m.source_added(source, provider)
        m.webhooks_enabled(source)
        m.remediation_source(source, provider)
        for route in ROUTES[source]:
            for status in ("200", "429", "500", "timeout"):
                for _ in range(20):
                    m.request(source, route, status, rng.random() * 3)
        m.sweep_finished(source, "success", 1200.0, records=len(fleet.accounts[source]),
                         completed_at=time.time())
        for _ in range(50):
            m.webhook_event(source, "account", "accepted")
            m.push_refresh(source, rng.random())
        for kind in ("fix", "otp_each_refresh"):
            m.fix_request(source, provider, kind, "delivered")
        insts = fleet.institutions[source]
        for i in range(funnels // 2):
            inst_id, name, _size = insts[i % len(insts)]
            m.fix_institution(source, provider, inst_id, name, codes[-1 - i % 5], "requested")


class Loop(threading.Thread):
    """The agent's event loop in its own thread (the listener and the tracker run there)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro, timeout: float = 600):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Timed:
    """Wraps the exposition's ``render`` to time it inside the server (its thread's CPU
    time too: on a shared machine the steadier of the two)."""

    def __init__(self, exposition):
        self.render = exposition.render
        self.last: tuple[float, float] = (0.0, 0.0)
        exposition.render = self

    def __call__(self, *args):
        t, c = time.perf_counter(), time.thread_time()
        out = self.render(*args)
        self.last = (time.perf_counter() - t, time.thread_time() - c)
        return out


def scrape(client: httpx.Client, url: str, timed: Timed) -> tuple[float, float, float, float]:
    """(seconds to the headers, to the last byte, of the render in the server, of its CPU)."""
    t = time.perf_counter()
    with client.stream("GET", url, headers=HEADERS) as r:
        head = time.perf_counter() - t
        b"".join(r.iter_raw())
    total = time.perf_counter() - t
    assert r.status_code == 200 and r.headers.get("content-encoding") == "gzip", r.headers
    return head, total, *timed.last


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
    return f"median {statistics.median(values) * 1000:7.1f} ms  p90 {p90 * 1000:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--institutions", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--text", action="store_true",
                        help="ask for the text format 0.0.4 instead of OpenMetrics")
    parser.add_argument("--funnels", type=int, default=300,
                        help="(institution, code) pairs in the repair funnel (live series)")
    args = parser.parse_args()
    if args.text:
        HEADERS["Accept"] = "text/plain;version=0.0.4"
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        settings = Settings(state={"path": str(Path(tmp) / "state.db")},
                            web={"listen_address": f"127.0.0.1:{port}"})
        agent = Agent(settings, sources=[])
        loop = Loop()
        loop.start()
        server = agent.http_server(settings.web.listen_address)

        async def start() -> None:
            loop.loop.create_task(server.serve())
            while not server.started:
                await asyncio.sleep(0.01)

        loop.call(start())
        fleet = Fleet(args.institutions)
        now = time.time()
        t = time.perf_counter()
        for night in (0, 1):
            for source in fleet.sources:
                loop.call(sweep(agent, source, fleet.records(source, night, now)))
        fill_directory(agent, fleet, now)
        fill_self_metrics(agent, fleet, args.funnels)
        loop.call(agent.health.ages.run())
        # routing advice on every key, for the fleet's two aggregators (the agent was built
        # without sources)
        agent.routing = Advisor(settings.routing, ("finicity", "mx"), agent.metrics.agent)
        advice = agent.routing.update(agent.health.report())
        setup = time.perf_counter() - t
        url = f"http://127.0.0.1:{port}/metrics"
        rng = random.Random(11)
        timed = Timed(agent.metrics.exposition)
        with httpx.Client(timeout=60) as client:
            body = client.get(url, headers=HEADERS).content  # decoded
            text = body
            series = sum(1 for line in text.split(b"\n") if line and not line.startswith(b"#"))
            live = sum(1 for line in openmetrics.generate_latest(agent.metrics.live).split(b"\n")
                       if line and not line.startswith(b"#"))
            accounts = sum(len(a) for a in fleet.accounts.values())
            print(f"fleet: {args.institutions:,} institutions, {accounts:,} accounts, "
                  f"{series:,} series ({live:,} of them live: self-metrics and ages, rendered "
                  f"per scrape), {len(text) / 1e6:.1f} MB of text, "
                  f"{len(agent.metrics.exposition.render(HEADERS['Accept'], 'gzip')[0]) / 1e3:.0f}"
                  f" KB gzipped (set up in {setup:.0f} s); routing advice for "
                  f"{len(advice):,} institution keys, "
                  f"{text.count(b'openfinance_routing_share{'):,} routing_share series")
            profile = os.environ.get("BENCH_PYSPY")
            spy = None
            if profile:
                raw = ["--format", "raw"] if profile.endswith(".txt") else []
                spy = subprocess.Popen(["py-spy", "record", "-o", profile, "-r", "200", *raw,
                                        "-p", str(os.getpid())], stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
                time.sleep(2)
            cached = [scrape(client, url, timed) for _ in range(args.repeat)]
            pushed = []
            for _ in range(args.repeat):
                source = rng.choice(("fin", "mx"))
                provider, codes = fleet.sources[source]
                key, inst_id, name, _salt = rng.choice(fleet.accounts[source])
                before = agent.tracker.snapshot.sources[source].accounts
                while agent.tracker.snapshot.sources[source].accounts == before:
                    code = rng.choice(codes[40:])  # a broken code: the push changes a count
                    records = [AccountStatus(source, provider, k, inst_id, name, code,
                                             time.time(), None, "owner-bench", f"login-{k}")
                               for k in (key, key + "-b")]
                    loop.call(agent.tracker.apply_records(source, provider, records))
                pushed.append(scrape(client, url, timed))
            after_push = [scrape(client, url, timed) for _ in range(3)]
            swept = []
            for night in (2, 3):
                loop.call(sweep(agent, "fin", fleet.records("fin", night, now)))
                swept.append(scrape(client, url, timed))
            lagged = []
            for _ in range(2):
                loop.call(agent.health.ages.run())
                lagged.append(scrape(client, url, timed))
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its file on an interrupt
                spy.wait()
        print(f"/metrics over HTTP, {'text 0.0.4' if args.text else 'OpenMetrics'} + gzip: the "
              "render in the server (wall, and its CPU), the answer's headers and its last byte "
              "at the client:")
        for label, runs in (("nothing changed", cached),
                            ("first after a one-customer push", pushed),
                            ("  (and the scrapes after it)", after_push),
                            ("first after a full sweep of fin", swept),
                            ("first after the refresh lag re-read", lagged)):
            print(f"  {label:36s} (n={len(runs)})\n"
                  f"    render {ms([r[2] for r in runs])}   CPU {ms([r[3] for r in runs])}\n"
                  f"    headers {ms([r[0] for r in runs])}   last byte "
                  f"{ms([r[1] for r in runs])}")
        server.should_exit = True
        loop.call(asyncio.sleep(0.3))
        loop.call(agent.tracker.close())
        loop.loop.call_soon_threadsafe(loop.loop.stop)


if __name__ == "__main__":
    main()
