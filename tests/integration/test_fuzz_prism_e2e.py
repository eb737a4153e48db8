"""A minute against Prism's dynamic mocks of the three official specs (Finicity, MX v20111101,
MX v20250224; random schema-valid data): no traceback, sweeps finish (`success` or
`partial`), the `openfinance_accounts` series stay under the caps (unknown codes per source,
small institutions folded into "other"), and Prism's request validation finds no violation in
anything the agent sent: sweeps, pushed re-reads and repair links (widget URLs, Connect Fix)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from pathlib import Path

import httpx
import pytest
import yaml

from exporter.config import Settings
from exporter.sources.errors import UpstreamError
from exporter.status_codes import Catalog
from exporter.upstreams import build_source
from tests.integration.procs import EXPORTER, REPO, Proc, free_port, wait_for
from tests.integration.prom import scrape, stop_all

pytestmark = pytest.mark.integration

OPENAPI = REPO.parent / "shared" / "reference" / "openapi"
SPECS = {"finicity": "mastercard-openbanking-us.yaml", "mx": "mx-platform-api-v20111101.yml",
         "mx25": "mx-platform-api-v20250224.yml"}
PRISM = shutil.which("prism", path=str(REPO / ".tools" / "prism" / "node_modules" / ".bin"))
RUN_SECONDS = 60
MAX_UNKNOWN_CODES = 50
MIN_ACCOUNTS = 3


def _spec(name: str) -> Path:
    for base in (OPENAPI, REPO / "tests" / "fixtures" / "openapi"):
        if (base / name).exists():
            return base / name
    raise AssertionError(f"{name} not found under {OPENAPI}")


class PrismProc(Proc):
    def __init__(self, work: Path, provider: str):
        assert PRISM, "prism not found: run scripts/install-tools.sh"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(f"prism-{provider}", [
            PRISM, "mock", "-d", "-h", "127.0.0.1", "-p", str(self.port),
            str(_spec(SPECS[provider]))], work)

    def up(self) -> bool:
        assert self.popen.poll() is None, self.log()[-3000:]
        try:
            httpx.get(self.url, timeout=2)
            return True
        except httpx.TransportError:
            return False


def test_a_minute_of_random_schema_valid_data(tmp_path):
    procs: list[Proc] = []
    try:
        finicity, mx, mx25 = (PrismProc(tmp_path, "finicity"), PrismProc(tmp_path, "mx"),
                              PrismProc(tmp_path, "mx25"))
        procs += [finicity, mx, mx25]
        for prism in (finicity, mx, mx25):  # ~35 s to load the Finicity spec; all load at once
            wait_for(prism.up, 120, what=f"{prism.name}\n{prism.log()[-2000:]}")
        http = {"max_concurrency": 8, "rate_limit_per_second": 500, "rate_limit_burst": 100,
                "backoff_base": 0.05, "backoff_max": 0.5, "max_retries": 1, "timeout": 10}
        schedule = {"interval": 2, "jitter": 0}
        config = tmp_path / "agent.yml"
        config.write_text(yaml.safe_dump({
            "sources": [
                {"name": "finicity-fuzz", "provider": "finicity", "base_url": finicity.url,
                 "app_key": "k", "partner_id": "1", "partner_secret": "s",
                 "customer_type": "all", "page_size": 25, "schedule": schedule, "http": http},
                {"name": "mx-fuzz", "provider": "mx", "base_url": mx.url, "client_id": "c",
                 "api_key": "k", "page_size": 25, "schedule": schedule, "http": http,
                 "api_version": "v20111101"},
                {"name": "mx25-fuzz", "provider": "mx", "base_url": mx25.url, "client_id": "c",
                 "api_key": "k", "page_size": 25, "schedule": schedule, "http": http},
            ],
            "state": {"path": str(tmp_path / "state.db")},
            "tracker": {"institution_min_accounts": MIN_ACCOUNTS,
                        "max_unknown_codes": MAX_UNKNOWN_CODES},
        }))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        agent = Proc("agent", [*EXPORTER, "run", "--config.file", str(config),
                               "--web.listen-address", f"127.0.0.1:{port}"], tmp_path)
        procs.append(agent)
        known = {(e.provider, e.code) for e in Catalog.default()}
        provider_of = {"finicity-fuzz": "finicity", "mx-fuzz": "mx", "mx25-fuzz": "mx"}
        deadline = time.time() + RUN_SECONDS
        peak_series, peak_unknown = 0, 0
        while time.time() < deadline:
            assert agent.popen.poll() is None, agent.log()[-3000:]
            try:
                accounts = scrape(url).get("openfinance_accounts", [])
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            peak_series = max(peak_series, len(accounts))
            for source, provider in provider_of.items():
                unknown = {labels["code"] for labels, _ in accounts
                           if labels["source"] == source and labels["code"] != "other"
                           and (provider, labels["code"]) not in known}
                assert len(unknown) <= MAX_UNKNOWN_CODES, (source, sorted(unknown))
                peak_unknown = max(peak_unknown, len(unknown))
            time.sleep(1)
        samples = scrape(url)
        done = {(labels["source"], labels["result"]): value
                for labels, value in samples.get("openfinance_sweeps_total", [])}
        log = agent.log()
        assert "Traceback" not in log, log[log.index("Traceback") - 500:][:4000]
        for source in provider_of:
            finished = done.get((source, "success"), 0) + done.get((source, "partial"), 0)
            assert finished >= 1, (source, done, log[-3000:])
        institutions = {labels["institution_id"] for labels, _ in
                        samples.get("openfinance_accounts", [])}
        # Series: per source, (institutions kept + "other") x (codes seen, capped).
        print(f"peak openfinance_accounts series {peak_series}, peak unknown codes per source "
              f"{peak_unknown}, institutions {len(institutions)}, sweeps {done}")
        assert peak_unknown > 0, "the mocks produced no unknown code: the cap was not exercised"
        asyncio.run(_repair_and_reread(yaml.safe_load(config.read_text())["sources"]))
        for prism in (finicity, mx, mx25):
            # Prism's own random answers break the response schema in places: not ours.
            violations = [line for line in prism.log().splitlines()
                          if "[VALIDATOR]" in line and "✖" in line
                          and "response" not in line.lower()]
            checked = prism.log().count("passed the validation rules")
            kinds = sorted({line.split("error", 1)[-1].strip() for line in violations})
            print(f"{prism.name}: {checked} requests validated, {len(violations)} violations "
                  f"{kinds[:10]}")
            assert checked > 0 and violations == [], (prism.name, violations[:5])
    finally:
        stop_all(reversed(procs))


async def _repair_and_reread(sources: list[dict]) -> None:
    """What push and the repair loop send, as the agent builds it: one owner's re-read and one
    repair link per source (Prism's random answers may not fit; only the requests count)."""
    for config in Settings(sources=sources).sources:
        source = build_source(config, _Quiet())
        owner, login = (("1005061234", "1007302745") if config.provider == "finicity"
                        else ("USR-1", "MBR-1"))
        try:
            with contextlib.suppress(UpstreamError):
                await source.refresh_owner(owner)
            with contextlib.suppress(UpstreamError):
                await source.fix_link(owner, login)
        finally:
            await source.aclose()


class _Quiet:
    def __getattr__(self, name):
        return lambda *args, **kwargs: None
