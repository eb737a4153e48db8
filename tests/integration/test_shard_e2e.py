"""Three agents with `shard: {index: auto, count: 3}` against one sandbox, as the pods of the
chart's StatefulSet: a real Prometheus summing across them sees exactly the sandbox's truth,
and every upstream customer (Finicity) and user (MX) is read by exactly one agent.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.procs import EXPORTER, Proc, Sandbox, agent_config, free_port, wait_for
from tests.integration.prom import PrometheusProc, logs_tail, scrape, stop_all

pytestmark = pytest.mark.integration

SHARDS = 3
SCENARIO = {"finicity": {"units": 90}, "mx": {"units": 60}, "finicity_testing_customers": 4}
# The demo configuration reads every customer type: active (units) and testing ones.
CUSTOMERS = {"finicity": 90 + 4, "mx": 60}
# Route templates of the per-unit reads (sandbox stats and the agent's `endpoint` label).
FINICITY_UNIT_READ = "/aggregation/v1/customers/{customerId}/accounts"
MX_UNIT_READ = "/users/{user_guid}/members"  # the sandbox's route
MX_UNIT_ENDPOINT = "/users/{user_identifier}/members"  # the agent's (v20250224's) template


class ShardAgent(Proc):
    """`run` with OPENFINANCE_SHARD_INDEX, as a StatefulSet pod's ordinal would give it."""

    def __init__(self, work: Path, config: Path, index: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(f"agent-{index}", [
            *EXPORTER, "run", "--config.file", str(config),
            "--web.listen-address", f"127.0.0.1:{self.port}", "--log.level", "debug"], work,
            env={"OPENFINANCE_SHARD_INDEX": str(index),
                 "OPENFINANCE_STATE__PATH": str(work / f"state-{index}.db")})

    def ready(self) -> bool:
        assert self.popen.poll() is None, f"{self.name} exited:\n{self.log()[-3000:]}"
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def swept(self) -> bool:
        done: dict[str, float] = defaultdict(float)
        for labels, value in scrape(self.url).get("openfinance_sweeps_total", []):
            if labels["result"] == "success":
                done[labels["source"]] += value
        return len(done) == 2 and all(v >= 1 for v in done.values())


def _fleet(rows) -> dict[tuple[str, str, str, str], float]:
    out: dict[tuple[str, str, str, str], float] = defaultdict(float)
    for labels, value in rows:
        if value:
            out[(labels["provider"], labels["institution_id"], labels["code"],
                 labels["category"])] += float(value)
    return dict(out)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    work = tmp_path_factory.mktemp("shards")
    procs: list[Proc] = []
    try:
        scenario = work / "scenario.yml"
        scenario.write_text(yaml.safe_dump(SCENARIO))
        sandbox = Sandbox(work, scenario)
        procs.append(sandbox)
        # One sweep per agent (a long interval, run at start): request counts stay exact.
        config = agent_config(work / "agent.yml", sandbox.url, work / "unused.db",
                              interval=3600)
        data = yaml.safe_load(config.read_text())
        for source in data["sources"]:
            source["shard"] = {"index": "auto", "count": SHARDS}
        config.write_text(yaml.safe_dump(data))
        agents = []
        for i in range(SHARDS):
            agent = ShardAgent(work, config, i)
            procs.append(agent)
            agents.append(agent)
        for agent in agents:
            wait_for(agent.ready, 60, what=f"{agent.name} ready")
            wait_for(agent.swept, 120, what=f"{agent.name}'s first sweeps\n{logs_tail(procs)}")
        prometheus = PrometheusProc(work, [a.url for a in agents])
        procs.append(prometheus)
        yield sandbox, agents, prometheus
    finally:
        stop_all(reversed(procs))


def test_the_sum_across_shards_equals_the_sandbox_truth(fleet):
    sandbox, agents, prometheus = fleet
    want = _fleet((r, r["accounts"]) for r in sandbox.truth()["accounts"])
    expr = "sum by (provider, institution_id, code, category) (openfinance_accounts)"

    def got() -> dict:
        return _fleet((r["metric"], r["value"][1]) for r in prometheus.query(expr))

    wait_for(lambda: got() == want, 60,
             what=f"Prometheus' sums to equal the truth: missing "
                  f"{ {k: v for k, v in want.items() if got().get(k) != v} }")
    # Every shard holds part of the fleet; none holds all of it.
    total = sum(want.values())
    per_agent = [sum(_fleet(scrape(a.url).get("openfinance_accounts", [])).values())
                 for a in agents]
    assert sum(per_agent) == total
    assert all(0 < n < total for n in per_agent), per_agent


def test_each_upstream_customer_is_read_by_exactly_one_shard(fleet):
    sandbox, agents, _ = fleet
    reads = sandbox.stats()["requests"]
    # One sweep per agent, no faults: one read per customer and per user across all shards
    # (without sharding each agent would read them all: three times as many).
    assert reads[f"GET /finicity{FINICITY_UNIT_READ}"] == CUSTOMERS["finicity"], reads
    assert reads[f"GET /mx{MX_UNIT_READ}"] == CUSTOMERS["mx"], reads
    for agent in agents:
        by_endpoint: dict[str, float] = defaultdict(float)
        for labels, value in scrape(agent.url).get("openfinance_upstream_requests_total", []):
            by_endpoint[labels["endpoint"]] += value
        for route, provider in ((FINICITY_UNIT_READ, "finicity"), (MX_UNIT_ENDPOINT, "mx")):
            assert 0 < by_endpoint[route] < CUSTOMERS[provider], (agent.name, dict(by_endpoint))
