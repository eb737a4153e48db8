"""`run --web.config.file`: the real agent behind TLS, mutual TLS and basic auth, checked by
httpx, curl and a real Prometheus 2.42 scraping with `scheme: https`, `tls_config` and
`basic_auth` — and a certificate rotated under the running agent.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.integration.procs import EXPORTER, Proc, Sandbox, agent_config, free_port, wait_for
from tests.integration.prom import check_tool, logs_tail, stop_all
from tests.tls_support import CA, Issued, bcrypt_hash, served_serial

pytestmark = pytest.mark.integration

USER, PASSWORD = "prometheus", "correct horse battery staple"
JOB = "openfinance-exporter"


class Stack:
    """A sandbox, the agent on https with mTLS + basic auth, and a Prometheus scraping it."""

    def __init__(self, work: Path):
        self.work = work
        self.procs: list[Proc] = []
        self.ca = CA(work / "pki")
        self.client = self.ca.issue("prometheus-client", client=True)
        self.stranger = CA(work / "stranger", "stranger-ca").issue("intruder", client=True)
        web = work / "web"
        web.mkdir()
        self.server = self.ca.issue("agent", cert_path=web / "tls.crt", key_path=web / "tls.key")
        shutil.copy(self.ca.path, web / "ca.crt")
        self.web_config = web / "web-config.yml"
        self.web_config.write_text(yaml.safe_dump({
            "tls_server_config": {"cert_file": "tls.crt", "key_file": "tls.key",
                                  "client_ca_file": "ca.crt",
                                  "client_auth_type": "RequireAndVerifyClientCert",
                                  "min_version": "TLS12"},
            "basic_auth_users": {USER: bcrypt_hash(PASSWORD, rounds=10)},
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff",
                                               "Strict-Transport-Security": "max-age=31536000"}},
        }))
        scenario = work / "scenario.yml"
        scenario.write_text(yaml.safe_dump({"finicity": {"units": 40}, "mx": {"units": 30}}))
        self.sandbox = self._start(lambda: Sandbox(work, scenario))
        config = agent_config(work / "agent.yml", self.sandbox.url, work / "state.db", interval=1)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.agent = self._start(lambda: Proc("agent", [
            *EXPORTER, "run", "--config.file", str(config),
            "--web.listen-address", f"127.0.0.1:{self.port}",
            "--web.config.file", str(self.web_config), "--log.level", "debug"], work))
        wait_for(self._agent_ready, 60, what=f"the agent on https\n{self.agent.log()[-3000:]}")
        self.prometheus_port = free_port()
        self.prometheus = self._start(self._prometheus)

    def _start(self, make):
        proc = make()
        self.procs.append(proc)
        return proc

    def client_for(self, cert: Issued | None = None, auth: tuple[str, str] | None = None):
        ctx = ssl.create_default_context(cafile=str(self.ca.path))
        if cert is not None:
            ctx.load_cert_chain(cert.cert, cert.key)
        return httpx.Client(base_url=self.url, verify=ctx, auth=auth, timeout=30)

    def _agent_ready(self) -> bool:
        assert self.agent.popen.poll() is None, "the agent exited"
        try:
            with self.client_for(self.client) as c:
                return c.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def _prometheus(self) -> Proc:
        target = {"static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}],
                  "scheme": "https"}
        tls = {"ca_file": str(self.ca.path), "cert_file": str(self.client.cert),
               "key_file": str(self.client.key)}
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": JOB, **target, "tls_config": tls,
                 "basic_auth": {"username": USER, "password": PASSWORD}},
                {"job_name": "wrong-password", **target, "tls_config": tls,
                 "basic_auth": {"username": USER, "password": "guess"}},
                {"job_name": "no-client-cert", **target, "tls_config": {"ca_file": str(self.ca.path)},
                 "basic_auth": {"username": USER, "password": PASSWORD}},
            ],
        }
        path = self.work / "prometheus.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        check_tool(["promtool", "check", "config", str(path)])
        proc = Proc("prometheus", [
            "prometheus", f"--config.file={path}", f"--storage.tsdb.path={self.work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.prometheus_port}"], self.work)
        self.procs.append(proc)
        wait_for(lambda: httpx.get(f"{self.prom_url}/-/ready").status_code == 200,
                 what="Prometheus to be ready")
        return proc

    @property
    def prom_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    def targets(self) -> dict[str, dict]:
        data = httpx.get(f"{self.prom_url}/api/v1/targets", timeout=10).json()["data"]
        return {t["labels"]["job"]: t for t in data["activeTargets"]}

    def query(self, expr: str) -> list[dict]:
        return httpx.get(f"{self.prom_url}/api/v1/query", params={"query": expr},
                         timeout=10).json()["data"]["result"]

    def diagnostics(self) -> str:
        return logs_tail(self.procs)

    def stop(self) -> None:
        stop_all(reversed(self.procs))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("webconfig"))
    try:
        yield s
    finally:
        s.stop()


def test_metrics_over_mutual_tls_with_basic_auth(stack):
    with stack.client_for(stack.client, (USER, PASSWORD)) as c:
        wait_for(lambda: "openfinance_accounts{" in c.get("/metrics").text, 60,
                 what=f"fleet series in the exposition\n{stack.diagnostics()}")
        response = c.get("/metrics")
    assert response.status_code == 200
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"] == "max-age=31536000"
    assert "openfinance_accounts{" in response.text


def test_wrong_or_missing_credentials_get_401_and_probes_need_none(stack):
    for auth in (None, (USER, "guess"), ("nobody", PASSWORD)):
        with stack.client_for(stack.client, auth) as c:
            response = c.get("/metrics")
            assert response.status_code == 401, auth
            assert response.headers["www-authenticate"] == "Basic"
    with stack.client_for(stack.client) as c:
        assert c.get("/-/healthy").status_code == 200
        assert c.get("/-/ready").status_code == 200


@pytest.mark.parametrize("who", ["no certificate", "a certificate from another CA"])
def test_a_client_without_a_trusted_certificate_fails_the_handshake(stack, who):
    cert = None if who == "no certificate" else stack.stranger
    with stack.client_for(cert, (USER, PASSWORD)) as c, \
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        c.get("/metrics")


def test_plain_http_gets_no_metrics(stack):
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{stack.port}/metrics", timeout=10)


def _curl(stack, *args: str) -> subprocess.CompletedProcess:
    assert shutil.which("curl"), "curl is on the machine image"
    return subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(stack.ca.path),
         *args, f"{stack.url}/metrics"], capture_output=True, text=True, timeout=30, check=False)


def test_curl_is_refused_with_a_wrong_password_or_without_a_certificate(stack):
    cert = ("--cert", str(stack.client.cert), "--key", str(stack.client.key))
    ok = _curl(stack, *cert, "-u", f"{USER}:{PASSWORD}")
    assert (ok.returncode, ok.stdout) == (0, "200"), ok.stderr
    wrong = _curl(stack, *cert, "-u", f"{USER}:guess")
    assert (wrong.returncode, wrong.stdout) == (0, "401"), wrong.stderr
    no_cert = _curl(stack, "-u", f"{USER}:{PASSWORD}")
    assert no_cert.returncode != 0 and no_cert.stdout == "000", (no_cert.returncode, no_cert.stderr)


def test_prometheus_scrapes_over_https_and_is_refused_without_credentials(stack):
    def health() -> dict[str, str]:
        return {job: t["health"] for job, t in stack.targets().items()}

    wanted = {JOB: "up", "wrong-password": "down", "no-client-cert": "down"}
    wait_for(lambda: health() == wanted, 60,
             what=f"target health {wanted}, got {health()}\n{stack.diagnostics()}")
    targets = stack.targets()
    assert "401" in targets["wrong-password"]["lastError"]
    assert targets["no-client-cert"]["lastError"]
    assert [r["value"][1] for r in stack.query(f'up{{job="{JOB}"}}')] == ["1"]
    wait_for(lambda: stack.query(f'openfinance_sweeps_total{{job="{JOB}"}}'), 60,
             what="the agent's series in Prometheus")


def test_a_rotated_certificate_is_served_without_a_restart(stack):
    old = served_serial_with_client(stack)
    assert old == stack.server.serial
    web = stack.web_config.parent
    staged = stack.ca.issue("agent-renewed", cert_path=web / "new.crt", key_path=web / "new.key")
    os.replace(staged.key, web / "tls.key")
    os.replace(staged.cert, web / "tls.crt")
    assert served_serial_with_client(stack) == staged.serial
    rotated_at = time.time()
    # Prometheus keeps scraping through the rotation (it trusts the CA, not the certificate).
    def scraped_after() -> bool:
        t = stack.targets()[JOB]
        return t["health"] == "up" and _epoch(t["lastScrape"]) > rotated_at + 1
    wait_for(scraped_after, 30, what=f"a scrape after the rotation\n{stack.diagnostics()}")
    assert stack.agent.popen.poll() is None
    assert "web config reloaded" in stack.agent.log()


def served_serial_with_client(stack) -> int:
    return served_serial("127.0.0.1", stack.port, stack.ca.path, stack.client)


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()
