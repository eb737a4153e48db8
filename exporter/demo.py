"""``openfinance-exporter sandbox`` and ``demo``: the simulated APIs, alone or with the agent.

The demo runs the sandbox and the real agent in one process and one event loop, talking
over real HTTP on loopback, so it exercises the same client code as production. No
credentials are needed: the sandbox's fixed, public ones are used.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

from exporter.config import Settings
from exporter.sandbox import credentials
from exporter.server import http_server, serve_until_signal, split_listen_address

log = logging.getLogger(__name__)

DEMO_NIGHT_SECONDS = 30.0


def sandbox_config(sandbox_url: str, *, state_path: Path, interval: float,
                   jitter: float | None = None, run_at_start: bool = True,
                   http: dict | None = None) -> dict:
    """A configuration (as in a config file) with one Finicity and one MX source pointed at
    the sandbox, which accepts the sandbox's well-known credentials."""
    schedule = {"interval": interval,
                "jitter": min(1.0, interval / 5) if jitter is None else jitter,
                "run_at_start": run_at_start}
    http = {"max_concurrency": 16, "rate_limit_per_second": 2000, "rate_limit_burst": 200,
            "backoff_base": 0.2, "backoff_max": 2.0, **(http or {})}
    return {
        "sources": [
            {"name": "finicity-sandbox", "provider": "finicity",
             "base_url": f"{sandbox_url}/finicity", "customer_type": "all",
             "app_key": credentials.FINICITY_APP_KEY,
             "partner_id": credentials.FINICITY_PARTNER_ID,
             "partner_secret": credentials.FINICITY_PARTNER_SECRET,
             # sandbox nights change declared statuses: re-read them as often as we sweep
             "institution_status_refresh": interval,
             "schedule": schedule, "http": http},
            {"name": "mx-sandbox", "provider": "mx", "base_url": f"{sandbox_url}/mx",
             "client_id": credentials.MX_CLIENT_ID, "api_key": credentials.MX_API_KEY,
             "schedule": schedule, "http": http},
        ],
        "state": {"path": str(state_path)},
    }


def sandbox_settings(sandbox_url: str, *, state_path: Path, interval: float,
                     listen_address: str, telemetry_path: str = "/metrics") -> Settings:
    """The demo's agent settings: :func:`sandbox_config` served on ``listen_address``."""
    config = sandbox_config(sandbox_url, state_path=state_path, interval=interval)
    return Settings(**config,
                    web={"listen_address": listen_address, "telemetry_path": telemetry_path})


def _sandbox_app(scenario_path: str | None, night_seconds: float | None):
    from exporter.sandbox.app import create_app
    from exporter.sandbox.scenario import load_scenario

    overrides = {} if night_seconds is None else {"night_seconds": night_seconds}
    scenario = load_scenario(scenario_path, overrides)
    return create_app(scenario), scenario


async def run_sandbox(args) -> int:
    address = args.listen_address or "127.0.0.1:9878"
    app, scenario = _sandbox_app(args.scenario, args.night_seconds)
    host, port = split_listen_address(address)
    mode = (f"a new night every {scenario.night_seconds:g} s" if scenario.night_seconds
            else "nights advance only with POST /sandbox/advance")
    log.info("sandbox listening address=%s mode=%r", address, mode)
    print(f"Sandbox: Finicity API at http://{host}:{port}/finicity, MX API at "
          f"http://{host}:{port}/mx; {mode}.\n"
          f"Ground truth: http://{host}:{port}/sandbox/truth, state: /sandbox/state",
          flush=True)
    await serve_until_signal([http_server(app, address)])
    return 0


async def run_demo(args) -> int:
    from exporter.agent import Agent

    night_seconds = DEMO_NIGHT_SECONDS if args.night_seconds is None else args.night_seconds
    app, _scenario = _sandbox_app(args.scenario, night_seconds)
    sandbox_address = args.sandbox_address
    s_host, s_port = split_listen_address(sandbox_address)
    connect_host = "127.0.0.1" if s_host in ("0.0.0.0", "::") else s_host
    listen = args.listen_address or "127.0.0.1:9877"
    with tempfile.TemporaryDirectory(prefix="openfinance-demo-") as tmp:
        state_path = Path(args.state_path) if args.state_path else Path(tmp) / "state.db"
        settings = sandbox_settings(f"http://{connect_host}:{s_port}", state_path=state_path,
                                    interval=args.sweep_interval, listen_address=listen,
                                    telemetry_path=args.telemetry_path or "/metrics")
        sandbox = http_server(app, sandbox_address)
        agent = Agent(settings)
        server = agent.http_server(listen)
        a_host, a_port = split_listen_address(listen)
        shown = "127.0.0.1" if a_host in ("0.0.0.0", "::") else a_host
        banner = _banner(f"http://{shown}:{a_port}", f"http://{connect_host}:{s_port}",
                         settings, night_seconds)

        async def start_agent_once_sandbox_is_up() -> None:
            while not sandbox.started:
                await asyncio.sleep(0.05)
            await agent.start()
            print(banner, flush=True)

        starter = asyncio.create_task(start_agent_once_sandbox_is_up())
        try:
            await serve_until_signal([sandbox, server])
        finally:
            starter.cancel()
            await asyncio.gather(starter, return_exceptions=True)
            await agent.stop()
    return 0


def _banner(agent_url: str, sandbox_url: str, settings: Settings, night_seconds: float) -> str:
    path = settings.web.telemetry_path
    return f"""
openfinance-exporter demo: the built-in sandbox plus the agent, no credentials needed.

  metrics        {agent_url}{path}
  sandbox        {sandbox_url}/sandbox/state   (ground truth: {sandbox_url}/sandbox/truth)
  schedule       a sweep of each source every {settings.sources[0].schedule.interval:g} s;
                 a new sandbox night every {night_seconds:g} s

What to look at (curl -s {agent_url}{path} | grep …), within a couple of minutes:
  openfinance_accounts{{category="institution"}}  an institution outage (9xx / DEGRADED)
                                                   starts on a later night
  openfinance_otp_suspected_accounts               accounts stuck in a repeated-185 loop
                                                   (three nights of MFA in a row)
  openfinance_fixable_accounts                     what Connect Fix could repair now
  openfinance_sweeps_total                         the agent's own health
Stop with Ctrl-C.
"""
