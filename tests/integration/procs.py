"""Real processes for integration tests: the sandbox, the agent, Prometheus, Alertmanager.

Every process listens on a free port on 127.0.0.1 and is stopped (by pid) when the test ends.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from exporter.demo import sandbox_config

REPO = Path(__file__).resolve().parents[2]
EXPORTER = [sys.executable, "-m", "exporter.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], bool], timeout: float = 30.0, what: str = "condition",
             interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class Proc:
    """A subprocess whose output goes to a log file shown when a test fails."""

    def __init__(self, name: str, args: list[str], log_dir: Path, env: dict | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                      env={**os.environ, **(env or {})}, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode


class Sandbox(Proc):
    def __init__(self, log_dir: Path, scenario: Path | None = None, night_seconds: float = 0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [*EXPORTER, "sandbox", "--web.listen-address", f"127.0.0.1:{self.port}",
                "--sandbox.night-seconds", str(night_seconds)]
        if scenario is not None:
            args += ["--sandbox.scenario", str(scenario)]
        super().__init__("sandbox", args, log_dir)
        wait_for(lambda: httpx.get(f"{self.url}/sandbox/state").status_code == 200,
                 what="the sandbox")

    def state(self) -> dict:
        return httpx.get(f"{self.url}/sandbox/state", timeout=30).json()

    def truth(self) -> dict:
        return httpx.get(f"{self.url}/sandbox/truth", timeout=60).json()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/sandbox/stats", timeout=30).json()

    def advance(self, nights: int = 1) -> dict:
        return httpx.post(f"{self.url}/sandbox/advance", params={"nights": nights},
                          timeout=30).json()


def agent_config(path: Path, sandbox_url: str, state_path: Path, *, interval: float = 3600,
                 run_at_start: bool = True) -> Path:
    """The demo's configuration (one source per provider on the sandbox) as a file, with
    fast retries and no jitter."""
    config = sandbox_config(sandbox_url, state_path=state_path, interval=interval, jitter=0,
                            run_at_start=run_at_start,
                            http={"rate_limit_per_second": 5000, "rate_limit_burst": 500,
                                  "backoff_base": 0.05, "backoff_max": 0.5})
    config.setdefault("health", {})["refresh_lag_interval"] = "2s"
    path.write_text(yaml.safe_dump(config))
    return path


def with_webhooks(config: Path, port: int, mx_user: str, mx_password: str) -> Path:
    """Turn on the agent's webhook listener at ``port`` for every source of ``config``
    (MX with HTTP Basic credentials)."""
    doc = yaml.safe_load(config.read_text())
    doc["webhooks"] = {"listen_address": f"127.0.0.1:{port}"}
    for src in doc["sources"]:
        src["webhooks"] = ({} if src["provider"] == "finicity" else
                           {"webhook_username": mx_user, "webhook_password": mx_password})
    config.write_text(yaml.safe_dump(doc))
    return config


def served_owners(config: Path, source: str) -> dict[str, Counter]:
    """What the sandbox serves now, per owner: (institution_id, code) counts, read with the
    agent's own source class (so codes are normalised the same way)."""
    from exporter.config import Settings
    from exporter.sources.base import NullObserver
    from exporter.upstreams import build_source

    settings = Settings(**yaml.safe_load(config.read_text()))
    cfg = next(s for s in settings.sources if s.name == source)
    records: list = []

    class Collect:
        async def add(self, batch):
            records.extend(batch)

        def progress(self, done, total):
            pass

    async def run():
        src = build_source(cfg, NullObserver())
        try:
            await src.sweep(Collect())
        finally:
            await src.aclose()

    asyncio.run(run())
    out: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        out[r.owner_id][(r.institution_id, r.code)] += 1
    return dict(out)


class AgentProc(Proc):
    def __init__(self, log_dir: Path, config: Path, name: str = "agent"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(name, [*EXPORTER, "run", "--config.file", str(config),
                                "--web.listen-address", f"127.0.0.1:{self.port}",
                                "--log.level", "debug"], log_dir)
        wait_for(lambda: httpx.get(f"{self.url}/-/ready").status_code == 200,
                 what="the agent to be ready")

    def scrape(self) -> dict[str, list]:
        """name → [(labels, value)] for every sample of the current exposition."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        out: dict[str, list] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append((s.labels, s.value))
        return out

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(v for got, v in self.scrape().get(name, [])
                   if all(got.get(k) == want for k, want in labels.items()))

    def accounts(self, source: str) -> Counter:
        """(institution_id, code) → accounts of one source, as /metrics shows them now."""
        got: Counter = Counter()
        for labels, value in self.scrape().get("openfinance_accounts", []):
            if labels["source"] == source and value:
                got[(labels["institution_id"], labels["code"])] += int(value)
        return +got

    def next_sweeps(self, sources) -> None:
        """Wait until a sweep of every source has started and finished after this call."""
        now = {name: self.sweeps(name) for name in sources}
        self.wait_sweeps({name: n + 2 for name, n in now.items()})

    def sweeps(self, source: str, result: str = "success") -> float:
        for labels, value in self.scrape().get("openfinance_sweeps_total", []):
            if labels == {"source": source, "result": result}:
                return value
        return 0.0

    def wait_sweeps(self, at_least: dict[str, float], timeout: float = 120) -> None:
        def done() -> bool:
            samples = self.scrape().get("openfinance_sweeps_total", [])
            got: dict[str, float] = {}
            for labels, value in samples:
                if labels["result"] in ("success", "partial"):
                    got[labels["source"]] = got.get(labels["source"], 0) + value
            return all(got.get(s, 0) >= n for s, n in at_least.items())
        wait_for(done, timeout, what=f"sweeps {at_least}", interval=0.25)
