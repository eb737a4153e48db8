"""What the push tests share: the sandbox sources' names, the MX webhook credentials, signed
Finicity Connect events, the sandbox and agent with push on, and users fixing logins through
the sandbox's control API."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from exporter.sandbox import credentials
from exporter.webhooks.verify import finicity_signature
from tests.integration.procs import AgentProc, Sandbox, agent_config, with_webhooks

FIN, MX = "finicity-sandbox", "mx-sandbox"
SOURCE = {"finicity": FIN, "mx": MX}
MX_USER, MX_PASSWORD = "mx-hooks", "mx-hooks-password-123"


def signed_headers(body: bytes, secret: str = credentials.FINICITY_PARTNER_SECRET) -> dict:
    """The headers of a Finicity webhook: JSON, signed with ``secret``."""
    return {"Content-Type": "application/json",
            "X-Finicity-Signature": finicity_signature(secret.encode(), body)}


def signed_post(url: str, body: bytes, secret: str = credentials.FINICITY_PARTNER_SECRET,
                timeout: float = 10) -> httpx.Response:
    return httpx.post(url, content=body, timeout=timeout, headers=signed_headers(body, secret))


def connect_event(customer: str, event_id: str, event_type: str = "done") -> bytes:
    return (f'{{"customerId":"{customer}","eventType":"{event_type}",'
            f'"eventId":"{event_id}","payload":{{}}}}').encode()


@contextmanager
def push_stack(work: Path, scenario: dict, hook_port: int, *,
               edit: Callable[[dict], None] | None = None,
               sources: tuple[str, ...] = (FIN, MX)) -> Iterator[tuple[Sandbox, AgentProc, Path]]:
    """The sandbox serving ``scenario`` and the agent with its webhook listener on
    ``hook_port`` (sweeps an hour apart, so only push moves /metrics), once each of
    ``sources`` has swept; ``edit`` changes the agent's configuration before it starts.
    Yields the sandbox, the agent and the configuration's path; stops both after."""
    scenario_path = work / "scenario.yml"
    scenario_path.write_text(yaml.safe_dump(scenario))
    sandbox = Sandbox(work, scenario_path, night_seconds=0)
    config = agent_config(work / "agent.yml", sandbox.url, work / "state.db", interval=3600)
    with_webhooks(config, hook_port, MX_USER, MX_PASSWORD)
    if edit is not None:
        doc = yaml.safe_load(config.read_text())
        edit(doc)
        config.write_text(yaml.safe_dump(doc))
    agent = AgentProc(work, config)
    try:
        agent.wait_sweeps(dict.fromkeys(sources, 1))
        yield sandbox, agent, config
    finally:
        agent.stop()
        sandbox.stop()


def fix_logins(sandbox: Sandbox, provider: str, n: int = 1, *,
               owners: Callable[[str], bool] = lambda owner: True) -> list[tuple[dict, dict]]:
    """Users of the sandbox repair ``n`` broken logins of distinct owners (of those
    ``owners`` accepts) through its control API: each login with the sandbox's answer."""
    logins = httpx.get(f"{sandbox.url}/sandbox/truth/logins", params={"provider": provider},
                       timeout=30).json()["logins"]
    fixed: list[tuple[dict, dict]] = []
    for login in logins:
        if len(fixed) == n:
            break
        owner = login["owner_id"]
        if not login["fixable"] or not owners(owner) or owner in {f["owner_id"] for f, _ in fixed}:
            continue
        answer = httpx.post(f"{sandbox.url}/sandbox/fix", timeout=10, params={
            "provider": provider, "owner_id": owner, "login_id": login["login_id"]}).json()
        if answer["fixed"]:
            fixed.append((login, answer))
    assert len(fixed) == n, f"only {len(fixed)} of {n} {provider} logins could be fixed"
    return fixed
