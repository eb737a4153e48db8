"""MX as it answers today, over real HTTP: the sandbox refuses a call without
``Accept-Version`` as MX has since 2026-08-12, and the agent's repair links (Connect widget
URLs opened on the broken member) work in both API versions it speaks. Sweeps and pushed
re-reads in both versions: ``test_push_sandbox``; against the official specs:
``test_fuzz_prism_e2e``."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from exporter.config import Settings
from exporter.sandbox.credentials import MX_API_KEY, MX_CLIENT_ID
from exporter.upstreams import build_source
from tests.integration.procs import Sandbox, agent_config, served_owners
from tests.unit.support import Recorder

pytestmark = pytest.mark.integration

MX = "mx-sandbox"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mx-versions")
    scenario = tmp / "scenario.yml"
    scenario.write_text(yaml.safe_dump({"finicity": {"units": 20}, "mx": {"units": 150}}))
    proc = Sandbox(tmp, scenario, night_seconds=0)
    yield proc
    proc.stop()


def test_the_sandbox_refuses_a_call_without_accept_version(sandbox):
    auth = (MX_CLIENT_ID, MX_API_KEY)
    old = httpx.get(f"{sandbox.url}/mx/users", auth=auth,
                    headers={"Accept": "application/vnd.mx.api.v1+json"})
    assert old.status_code == 406
    assert "accept-version" in old.json()["error"]["message"]
    for version, media in (("v20250224", "application/json"),
                           ("v20111101", "application/vnd.mx.api.v1+json")):
        ok = httpx.get(f"{sandbox.url}/mx/users", auth=auth,
                       headers={"Accept": media, "Accept-Version": version})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith(media)


@pytest.mark.parametrize("version", ["v20250224", "v20111101"])
def test_a_repair_link_repairs_the_member_in_both_versions(sandbox, tmp_path, version):
    config = agent_config(tmp_path / "agent.yml", sandbox.url, tmp_path / "state.db")
    doc = yaml.safe_load(config.read_text())
    for src in doc["sources"]:
        src["api_version"] = version if src["provider"] == "mx" else None
        if src["api_version"] is None:
            del src["api_version"]
    config.write_text(yaml.safe_dump(doc))
    login = next(x for x in _logins(sandbox) if x["fixable"])
    before = served_owners(config, MX)[login["owner_id"]]

    observer = Recorder()
    cfg = next(s for s in Settings(**doc).sources if s.name == MX)

    async def mint() -> str:
        source = build_source(cfg, observer)
        try:
            return await source.fix_link(login["owner_id"], login["login_id"])
        finally:
            await source.aclose()

    url = asyncio.run(mint())
    assert observer.versions == [("mx", version)] and observer.drift == []
    page = httpx.get(f"{sandbox.url}{urlsplit(url).path}", params={"complete": "1"}, timeout=10)
    assert page.status_code == 200, page.text
    [now] = [x for x in _logins(sandbox) if x["login_id"] == login["login_id"]]
    assert now["ok"] and not now["fixable"]
    after = served_owners(config, MX)[login["owner_id"]]
    assert after != before and sum(after.values()) == sum(before.values())


def _logins(sandbox: Sandbox) -> list[dict]:
    return httpx.get(f"{sandbox.url}/sandbox/truth/logins", params={"provider": "mx"},
                     timeout=30).json()["logins"]
