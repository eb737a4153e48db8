"""Forwarding to the owner shard with real processes: three agents with
`shard: {index: i, count: 3}` and `webhooks.peers` against one sandbox, every webhook posted
to pod 0 (as a Service in front of the pods would do for some of them).

Signed Finicity Connect events and MX member webhooks for owners of all three shards reach
the shard that owns them: each owner is re-read once, by its own shard, and the three
/metrics summed equal the sandbox's truth. With one peer stopped, pod 0 answers 503 +
Retry-After and keeps nothing; the sender's retry after the peer is back is applied once.
"""

from __future__ import annotations

import signal
import sqlite3
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
import yaml

from exporter.sources.sharding import shard_of
from tests.integration.procs import (
    AgentProc,
    Sandbox,
    agent_config,
    free_port,
    wait_for,
    with_webhooks,
)
from tests.integration.push_support import (
    FIN,
    MX,
    MX_PASSWORD,
    MX_USER,
    SOURCE,
    connect_event,
    fix_logins,
    signed_post,
)

pytestmark = pytest.mark.integration

SHARDS = 3
TXPUSH_TOKEN = "txpush-" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
# Route templates of one owner's read (the agent's `endpoint` label).
UNIT_READ = {FIN: "/aggregation/v1/customers/{customerId}/accounts",
             MX: "/users/{user_identifier}/members"}  # v20250224's route template


class Fleet:
    """The sandbox and three agents whose webhook listeners have fixed ports (the peers)."""

    def __init__(self, work: Path):
        self.work = work
        scenario = work / "scenario.yml"
        scenario.write_text(yaml.safe_dump({"finicity": {"units": 150}, "mx": {"units": 200}}))
        self.sandbox = Sandbox(work, scenario, night_seconds=0)
        self.hook_ports = [free_port() for _ in range(SHARDS)]
        peers = [f"http://127.0.0.1:{p}" for p in self.hook_ports]
        self.configs = []
        for i, port in enumerate(self.hook_ports):
            config = agent_config(work / f"agent-{i}.yml", self.sandbox.url,
                                  work / f"state-{i}.db", interval=3600)
            with_webhooks(config, port, MX_USER, MX_PASSWORD)
            doc = yaml.safe_load(config.read_text())
            doc["webhooks"]["peers"] = peers
            for src in doc["sources"]:
                src["shard"] = {"index": i, "count": SHARDS}
                if src["provider"] == "finicity":
                    src["webhooks"]["txpush_token"] = TXPUSH_TOKEN
            config.write_text(yaml.safe_dump(doc))
            self.configs.append(config)
        self.agents: list[AgentProc | None] = [None] * SHARDS
        for i in range(SHARDS):
            self.start(i)
        for agent in self.agents:
            agent.wait_sweeps({FIN: 1, MX: 1})

    def start(self, i: int, run_at_start: bool = True) -> AgentProc:
        if not run_at_start:  # a restart on the same state: only push may read now
            doc = yaml.safe_load(self.configs[i].read_text())
            for src in doc["sources"]:
                src["schedule"]["run_at_start"] = False
            self.configs[i].write_text(yaml.safe_dump(doc))
        self.agents[i] = AgentProc(self.work, self.configs[i], name=f"agent-{i}")
        return self.agents[i]

    def hooks(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.hook_ports[i]}/webhooks"

    def stop(self) -> None:
        for agent in self.agents:
            if agent is not None:
                agent.stop()
        self.sandbox.stop()

    def summed(self) -> dict:
        """(provider, institution_id, code, category) → accounts, summed over the agents."""
        out: dict = defaultdict(float)
        for agent in self.agents:
            for labels, value in agent.scrape().get("openfinance_accounts", []):
                if value:
                    out[(labels["provider"], labels["institution_id"], labels["code"],
                         labels["category"])] += value
        return dict(out)

    def truth(self) -> dict:
        out: dict = defaultdict(float)
        for r in self.sandbox.truth()["accounts"]:
            if r["accounts"]:
                out[(r["provider"], r["institution_id"], r["code"], r["category"])] += (
                    r["accounts"])
        return dict(out)

    def reads(self, i: int, source: str) -> float:
        return self.agents[i].value("openfinance_upstream_requests_total", source=source,
                                    endpoint=UNIT_READ[source])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    fleet = Fleet(tmp_path_factory.mktemp("forward"))
    try:
        yield fleet
    finally:
        fleet.stop()


def shard_fixes(sandbox: Sandbox, provider: str, shard: int, n: int = 1) -> list[dict]:
    """A user of the sandbox repairs ``n`` broken logins of distinct owners of ``shard``."""
    return [login for login, _ in fix_logins(
        sandbox, provider, n, owners=lambda owner: shard_of(owner, SHARDS) == shard)]


def post_event(fleet: Fleet, provider: str, login: dict, n: int = 0) -> httpx.Response:
    """What the aggregator sends after that fix, to pod 0: a signed Finicity `done`, or an
    MX member webhook with HTTP Basic."""
    owner = login["owner_id"]
    if provider == "finicity":
        return signed_post(f"{fleet.hooks()}/{FIN}", connect_event(owner, f"fix-{owner}-{n}"),
                           timeout=15)
    body = (f'{{"action":"updated","member":{{"guid":"{login["login_id"]}",'
            f'"user_guid":"{owner}","connection_status":"CONNECTED"}}}}').encode()
    return httpx.post(f"{fleet.hooks()}/{MX}", content=body, timeout=15,
                      auth=(MX_USER, MX_PASSWORD), headers={"Content-Type": "application/json"})


def events(agent: AgentProc, **labels: str) -> float:
    return agent.value("openfinance_webhook_events_total", **labels)


def test_events_for_every_shard_posted_to_pod_0_are_read_once_by_their_owners_shard(fleet):
    assert fleet.summed() == fleet.truth(), "the first sweeps are the baseline"
    reads = {(i, s): fleet.reads(i, s) for i in range(SHARDS) for s in (FIN, MX)}
    sweeps = {(i, s): fleet.agents[i].sweeps(s) for i in range(SHARDS) for s in (FIN, MX)}

    fixed = [(provider, *shard_fixes(fleet.sandbox, provider, shard))
             for provider in SOURCE for shard in range(SHARDS)]
    assert fleet.summed() != fleet.truth(), "the fixes changed what the sandbox serves"
    for provider, login in fixed:
        r = post_event(fleet, provider, login)
        assert r.status_code == (200 if provider == "finicity" else 204), r.text

    wait_for(lambda: fleet.summed() == fleet.truth(), timeout=5, interval=0.05,
             what="the three /metrics summed to equal the sandbox's truth")
    for i, agent in enumerate(fleet.agents):
        for source in (FIN, MX):
            assert fleet.reads(i, source) == reads[(i, source)] + 1, (agent.name, source)
            assert agent.sweeps(source) == sweeps[(i, source)], "no sweep did it"
            assert agent.value("openfinance_push_refresh_duration_seconds_count",
                               source=source) == 1
            assert events(agent, source=source, result="accepted") == 1
    zero = fleet.agents[0]
    assert events(zero, result="forwarded") == 4
    assert events(zero, source=FIN, kind="done", result="forwarded") == 2
    assert events(zero, source=MX, kind="member", result="forwarded") == 2
    assert zero.value("openfinance_webhook_forward_duration_seconds_count") == 4
    for agent in fleet.agents[1:]:
        assert events(agent, result="forwarded") == 0
    assert events(zero, result="ignored") == 0
    assert zero.value("openfinance_webhook_forward_failures_total") == 0


def test_a_txpush_event_is_forwarded_on_its_tokened_path(fleet):
    customers = httpx.get(f"{fleet.sandbox.url}/sandbox/truth/logins",
                          params={"provider": "finicity"}, timeout=30).json()["logins"]
    owner = next(c["owner_id"] for c in customers if shard_of(c["owner_id"], SHARDS) == 1)
    one = fleet.agents[1]
    reads = fleet.reads(1, FIN)
    body = (f'{{"event":{{"class":"account","type":"modified","records":[{{"id":"1",'
            f'"customerId":"{owner}","aggregationStatusCode":0}}]}}}}').encode()
    r = httpx.post(f"{fleet.hooks()}/{FIN}/txpush/{TXPUSH_TOKEN}", content=body, timeout=15)
    assert r.status_code == 200
    assert events(fleet.agents[0], source=FIN, kind="txpush_account", result="forwarded") == 1
    assert events(one, source=FIN, kind="txpush_account", result="accepted") == 1
    wait_for(lambda: fleet.reads(1, FIN) == reads + 1, timeout=5, what="shard 1's re-read")
    assert _inbox_rows(fleet.work / "state-0.db", owner) == 0
    assert _inbox_rows(fleet.work / "state-1.db", owner) == 1


def _inbox_rows(path: Path, owner: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT count(*) FROM webhook_inbox WHERE owner = ?",
                          (owner,)).fetchone()[0]
    finally:
        db.close()


def test_a_stopped_peer_gets_503_and_nothing_kept_then_the_retry_is_applied_once(fleet):
    zero = fleet.agents[0]
    (login,) = shard_fixes(fleet.sandbox, "finicity", 2)
    owner = login["owner_id"]
    before = {name: events(zero, result=name) for name in ("accepted", "forwarded", "ignored")}
    reads0 = fleet.reads(0, FIN)
    assert fleet.agents[2].stop(signal.SIGTERM) == 0

    r = post_event(fleet, "finicity", login, n=1)
    assert r.status_code == 503
    assert int(r.headers["retry-after"]) > 0
    assert {name: events(zero, result=name) for name in before} == before
    assert zero.value("openfinance_webhook_forward_failures_total", source=FIN,
                      reason="unreachable") == 1, "counted once, with why"
    assert zero.value("openfinance_webhook_forward_failures_total", source=FIN,
                      reason="unavailable") == 0
    assert _inbox_rows(fleet.work / "state-0.db", owner) == 0
    assert _inbox_rows(fleet.work / "state-2.db", owner) == 0
    assert fleet.reads(0, FIN) == reads0

    two = fleet.start(2, run_at_start=False)
    wait_for(lambda: two.accounts(FIN), timeout=30, what="agent-2's state restored")
    assert fleet.summed() != fleet.truth(), "the fix is not applied yet"
    r = post_event(fleet, "finicity", login, n=1)  # the sender's retry: the same bytes
    assert r.status_code == 200
    wait_for(lambda: fleet.summed() == fleet.truth(), timeout=5, interval=0.05,
             what="the retried event applied")
    assert post_event(fleet, "finicity", login, n=1).status_code == 200  # another redelivery
    wait_for(lambda: events(two, source=FIN, result="duplicate") == 1, timeout=5,
             what="the redelivery counted as a duplicate by the owner")
    assert events(two, source=FIN, result="accepted") == 1
    assert fleet.reads(2, FIN) == 1, "read once since the restart, by push only"
    assert _inbox_rows(fleet.work / "state-2.db", owner) == 1
    assert _inbox_rows(fleet.work / "state-0.db", owner) == 0
    assert events(zero, result="forwarded") == before["forwarded"] + 2
    assert fleet.summed() == fleet.truth()
    log = zero.log()
    assert "not forwarded to shard 2 (ConnectError)" in log
    assert "Traceback" not in log and owner not in log
