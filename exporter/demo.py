"""``openfinance-exporter sandbox`` and ``demo``: the simulated APIs, alone or with the agent.

The demo runs the sandbox and the real agent in one process and one event loop, talking
over real HTTP on loopback, so it exercises the same client code as production. No
credentials are needed: the sandbox's fixed, public ones are used. Both directions are
wired (:class:`DemoWiring`): the sandbox pushes its webhooks to the agent's webhook
listener, and the agent's repair loop sends its fix requests to the sandbox, whose users
fix some of the logins on later nights.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from exporter.config import Settings
from exporter.sandbox import credentials, runtime_of
from exporter.web.addresses import split_listen_address
from exporter.web.server import http_server, serve_until_signal

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


DEMO_MX_WEBHOOK_USERNAME = "demo-mx"


@dataclass(frozen=True)
class DemoWiring:
    """How the demo connects the sandbox and the agent both ways: the sandbox pushes its
    webhooks to the agent's webhook listener (``hooks_url``), and the agent's repair loop
    sends its fix requests to the sandbox, which plays the partner's receiver and its users.
    The two secrets are fresh for every run and shared by both sides only."""

    sandbox_url: str  # how the agent reaches the sandbox
    hooks_url: str  # how the sandbox (and users' browsers) reach the agent's webhook listener
    webhook_address: str  # the agent's webhook listener (listen address)
    link: str = "redirect"  # remediation.link
    mx_password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    request_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def scenario_overrides(self, fix_share: float | None = None,
                           fix_after_nights: int | None = None) -> dict:
        """The sandbox's side: where its webhooks go (the Finicity ones signed with its
        partner secret, which is the agent's source secret too; MX with HTTP Basic), the
        secret its users' receiver checks on every fix request, and consent periods."""
        users: dict = {"request_secret": self.request_secret}
        if fix_share is not None:
            users["fix_share"] = fix_share
        if fix_after_nights is not None:
            users["fix_after_nights"] = fix_after_nights
        return {
            # OAuth consent periods at two Finicity banks, so the demo shows the consent
            # horizon and renewals (a repair through a consent_renewal link renews)
            "finicity": {"consent": {"enabled": True}},
            "webhooks": {"finicity_url": f"{self.hooks_url}/webhooks/finicity-sandbox",
                         "mx_url": f"{self.hooks_url}/webhooks/mx-sandbox",
                         "mx_username": DEMO_MX_WEBHOOK_USERNAME,
                         "mx_password": self.mx_password},
            "users": users,
        }

    def agent_config(self, config: dict) -> dict:
        """The agent's side, added to a :func:`sandbox_config`: the webhook listener, each
        source's webhook credentials, and the repair loop pointed at the sandbox's users.

        Sandbox nights are short, so a real hour holds many nights' worth of new breakages:
        the storm guard's floor is raised to match (about a month of demo nights)."""
        out = {**config, "webhooks": {"listen_address": self.webhook_address}}
        out["sources"] = [
            {**src, "webhooks": ({} if src["provider"] == "finicity" else
                                 {"webhook_username": DEMO_MX_WEBHOOK_USERNAME,
                                  "webhook_password": self.mx_password})}
            for src in config["sources"]]
        out["remediation"] = {
            "enabled": True, "endpoint": f"{self.sandbox_url}/sandbox/partner/fix-requests",
            "secret": self.request_secret, "link": self.link,
            "public_url": self.hooks_url, "evaluate_interval": "2s",
            "backoff_base": "1s", "backoff_max": "30s", "storm_min": 2000,
            # the sandbox's users all click at the night boundary
            "click_rate_global": 500,
        }
        return out


def demo_routing(night_seconds: float) -> dict:
    """Routing holds scaled to sandbox nights: the advice moves away from a bank's failing
    aggregator one night after it fails (``hold``) and back two nights after it recovers
    (``recover_hold``), instead of 30 minutes and 2 hours."""
    night = night_seconds or DEMO_NIGHT_SECONDS
    return {"hold": night, "recover_hold": 2 * night}


def sandbox_settings(sandbox_url: str, *, state_path: Path, interval: float,
                     listen_address: str, telemetry_path: str = "/metrics",
                     wiring: DemoWiring | None = None,
                     routing: dict | None = None) -> Settings:
    """The demo's agent settings: :func:`sandbox_config` served on ``listen_address``, with
    push and the repair loop when ``wiring`` is given, and ``routing`` (a ``routing:``
    section, e.g. :func:`demo_routing`)."""
    config = sandbox_config(sandbox_url, state_path=state_path, interval=interval)
    if wiring is not None:
        config = wiring.agent_config(config)
    if routing is not None:
        config["routing"] = routing
    return Settings(**config,
                    web={"listen_address": listen_address, "telemetry_path": telemetry_path})


def _local(address: str) -> str:
    """``http://host:port`` for a listen address, as a local client reaches it."""
    host, port = split_listen_address(address)
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _sandbox_app(scenario_path: str | None, night_seconds: float | None,
                 extra: dict | None = None):
    from exporter.sandbox.app import create_app
    from exporter.sandbox.scenario import load_scenario

    overrides = {} if night_seconds is None else {"night_seconds": night_seconds}
    overrides.update(extra or {})
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
    sandbox_url = _local(args.sandbox_address)
    listen = args.listen_address or "127.0.0.1:9877"
    hooks_address = args.webhook_address
    wiring = DemoWiring(sandbox_url, _local(hooks_address), hooks_address,
                        link=args.remediation_link)
    app, scenario = _sandbox_app(args.scenario, night_seconds, wiring.scenario_overrides(
        args.fix_share, args.fix_after_nights))
    with tempfile.TemporaryDirectory(prefix="openfinance-demo-") as tmp:
        state_path = Path(args.state_path) if args.state_path else Path(tmp) / "state.db"
        settings = sandbox_settings(sandbox_url, state_path=state_path,
                                    interval=args.sweep_interval, listen_address=listen,
                                    telemetry_path=args.telemetry_path or "/metrics",
                                    wiring=wiring,
                                    routing=demo_routing(scenario.night_seconds))
        sandbox = http_server(app, args.sandbox_address)
        agent = Agent(settings)
        servers = [sandbox, *agent.http_servers(listen)]
        banner = _banner(_local(listen), sandbox_url, wiring, settings, scenario)

        async def start_agent_once_sandbox_is_up() -> None:
            while not all(s.started for s in servers):
                await asyncio.sleep(0.05)
            await agent.start()
            print(banner, flush=True)

        starter = asyncio.create_task(start_agent_once_sandbox_is_up())
        stopped = False

        async def stop_agent() -> None:
            # The agent first, while the sandbox still answers its last deliveries.
            nonlocal stopped
            starter.cancel()
            await asyncio.gather(starter, return_exceptions=True)
            if not stopped:
                stopped = True
                await agent.stop()

        try:
            await serve_until_signal(servers, before_stop=stop_agent)
        finally:
            await stop_agent()
            await runtime_of(app).close()
    return 0


def _banner(agent_url: str, sandbox_url: str, wiring: DemoWiring, settings: Settings,
            scenario) -> str:
    path = settings.web.telemetry_path
    users = scenario.users
    interval = settings.sources[0].schedule.interval
    nights = (f"a new sandbox night every {scenario.night_seconds:g} s" if scenario.night_seconds
              else f"nights advance only with curl -X POST {sandbox_url}/sandbox/advance")
    after = ("the same night" if users.fix_after_nights == 0 else
             f"{users.fix_after_nights} night(s) later" if users.fix_after_max_nights is None
             else f"{users.fix_after_nights} to {users.fix_after_max_nights} nights later")
    return f"""
openfinance-exporter demo: the built-in sandbox plus the agent, no credentials needed.

  metrics          {agent_url}{path}
  status page      {agent_url}/status   ("Route new links to": the routing advice)
  routing advice   {agent_url}/api/v1/routing   (UCP preferences: ?format=ucp; holds
                   {settings.routing.hold:g} s / {settings.routing.recover_hold:g} s, about a sandbox night)
  webhook listener {wiring.hooks_url}/webhooks/finicity-sandbox, …/webhooks/mx-sandbox
                   (the sandbox pushes its Finicity and MX webhooks here; fix links:
                   {wiring.hooks_url}/fix/<token>)
  sandbox          {sandbox_url}/sandbox/state   (ground truth: {sandbox_url}/sandbox/truth)
  partner's users  {sandbox_url}/sandbox/partner/fix-requests (fix requests received)
  sandbox webhooks {sandbox_url}/sandbox/webhooks (events sent to the agent)
  schedule         a sweep of each source every {interval:g} s; {nights}
  repair loop      link: {wiring.link}; {users.fix_share:.0%} of users fix {after}

What to look at (curl -s {agent_url}{path} | grep …):
  openfinance_webhook_events_total            webhooks pushed by the sandbox: each moves
                                               its owner's series within seconds, between
                                               sweeps (openfinance_push_refresh_duration_seconds)
  openfinance_fix_requests_total{{result="delivered"}}
                                               one fix request per broken login, sent to the
                                               sandbox's users after the first night
  openfinance_fix_outcomes_total{{outcome="fixed"}}
                                               the users who fixed (their `done` webhook
                                               closes the episode at once)
  openfinance_accounts{{category="institution"}}  an institution outage (9xx / DEGRADED)
                                               starts on a later night
  openfinance_otp_suspected_accounts           accounts stuck in a repeated-185 loop
  openfinance_routing_share{{provider="mx"}}     a bank in declared maintenance at Finicity
                                               (healthy at MX) gets all new links at MX
                                               one night after it starts
  openfinance_sweeps_total                     the agent's own health
Stop with Ctrl-C.
"""
