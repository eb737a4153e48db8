"""alerts/alertmanager.example.yml: amtool accepts it, and a real Alertmanager running it
routes by severity and lets an institution outage inhibit that institution's OTP alerts.

The receivers' URLs are rewritten to a webhook server this module runs on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from tests.alerts.alerts_support import ALERTMANAGER_EXAMPLE, free_port, run, wait_for

PAGER, CHAT, TICKET = "openfinance-pager", "openfinance-chat", "openfinance-ticket"


def test_amtool_accepts_the_example_config():
    result = run(["amtool", "check-config", str(ALERTMANAGER_EXAMPLE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_amtool_rejects_a_config_with_an_unknown_receiver(tmp_path):
    """The check above can fail."""
    cfg = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    cfg["route"]["routes"][0]["routes"][0]["receiver"] = "nobody"
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    assert run(["amtool", "check-config", str(bad)]).returncode != 0


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", PAGER), ("warning", CHAT), ("info", TICKET)]
)
def test_route_tree_sends_each_severity_to_its_receiver(severity, receiver):
    result = run([
        "amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_EXAMPLE}",
        "alertname=OpenFinanceInstitutionOutage", f"severity={severity}",
    ])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [receiver]


def test_example_groups_by_alertname_source_provider_and_institution():
    cfg = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    openfinance = cfg["route"]["routes"][0]
    assert openfinance["matchers"] == ['alertname=~"OpenFinance.+"']
    assert openfinance["group_by"] == ["alertname", "source", "provider", "institution"]


# --- a real Alertmanager -----------------------------------------------------------------------

class _Webhook:
    """Collects what Alertmanager posts, by receiver (the URL path)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts: list[tuple[str, dict[str, Any]]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with webhook.lock:
                    webhook.posts.append((self.path.strip("/"), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def alerts(self, receiver: str | None = None) -> list[dict[str, Any]]:
        """Every firing alert delivered, with the receiver it went to under ``_receiver``."""
        with self.lock:
            posts = list(self.posts)
        return [
            {**alert, "_receiver": path}
            for path, body in posts
            if receiver in (None, path)
            for alert in body["alerts"]
            if alert["status"] == "firing"
        ]


def _rewrite(cfg: dict[str, Any], webhook_port: int) -> dict[str, Any]:
    """Point every receiver at the local webhook and send each new group at once."""
    rewritten = 0
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://127.0.0.1:{webhook_port}/{receiver['name']}"
            rewritten += 1
    assert rewritten == len(cfg["receivers"]), "every example receiver should be a webhook"

    def fast(route: dict[str, Any]) -> None:
        route["group_wait"] = "0s"
        route["group_interval"] = "1s"
        for child in route.get("routes", []):
            fast(child)

    fast(cfg["route"])
    return cfg


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("alertmanager")
    webhook = _Webhook()
    webhook.thread.start()
    cfg = _rewrite(yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8")), webhook.port)
    config = tmp / "alertmanager.yml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    check = run(["amtool", "check-config", str(config)])
    assert check.returncode == 0, check.stdout + check.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (tmp / "alertmanager.log").open("w")
    proc = subprocess.Popen(
        [
            "prometheus-alertmanager",
            f"--config.file={config}",
            f"--storage.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"alertmanager exited: {(tmp / 'alertmanager.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, "alertmanager to be ready")
        yield url, webhook
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        webhook.server.shutdown()
        webhook.server.server_close()


def _add(url: str, alertname: str, **labels: str) -> None:
    result = run([
        "amtool", "alert", "add", f"alertname={alertname}",
        *(f"{k}={v}" for k, v in labels.items()),
        "--annotation=summary=test", f"--alertmanager.url={url}",
    ])
    assert result.returncode == 0, result.stdout + result.stderr


def _institution(iid: str, name: str) -> dict[str, str]:
    return {"source": "finicity-prod", "provider": "finicity", "institution_id": iid, "institution": name}


def _delivered(webhook: _Webhook, alertname: str, iid: str) -> list[str]:
    return [
        a["_receiver"] for a in webhook.alerts()
        if a["labels"]["alertname"] == alertname and a["labels"].get("institution_id") == iid
    ]


def test_critical_pages_warning_goes_to_chat_info_to_tickets(alertmanager):
    url, webhook = alertmanager
    _add(url, "OpenFinanceInstitutionOutage", severity="critical", **_institution("r-1", "Route Bank 1"))
    _add(url, "OpenFinanceRepeatedOTP", severity="warning", **_institution("r-2", "Route Bank 2"))
    _add(url, "OpenFinanceFixableBacklogHigh", severity="info", **_institution("r-3", "Route Bank 3"))

    expected = {
        ("OpenFinanceInstitutionOutage", "r-1"): PAGER,
        ("OpenFinanceRepeatedOTP", "r-2"): CHAT,
        ("OpenFinanceFixableBacklogHigh", "r-3"): TICKET,
    }
    wait_for(
        lambda: all(_delivered(webhook, name, iid) for name, iid in expected),
        "all three alerts to reach a receiver",
    )
    for (name, iid), receiver in expected.items():
        assert set(_delivered(webhook, name, iid)) == {receiver}, name


def test_notifications_carry_the_grouping_labels(alertmanager):
    url, webhook = alertmanager
    _add(url, "OpenFinanceInstitutionOTPSurge", severity="critical", **_institution("g-1", "Group Bank"))
    wait_for(lambda: _delivered(webhook, "OpenFinanceInstitutionOTPSurge", "g-1"), "the surge page")
    with webhook.lock:
        bodies = [b for path, b in webhook.posts if path == PAGER
                  and b["commonLabels"].get("institution_id") == "g-1"]
    assert bodies
    assert bodies[0]["groupLabels"] == {
        "alertname": "OpenFinanceInstitutionOTPSurge",
        "source": "finicity-prod",
        "provider": "finicity",
        "institution": "Group Bank",
    }


def _api_alerts(url: str, **labels: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in labels.items()])
    with urllib.request.urlopen(f"{url}/api/v2/alerts?{query}", timeout=5) as r:
        return json.loads(r.read())


def test_outage_inhibits_the_same_institutions_otp_alert_but_not_another_ones(alertmanager):
    url, webhook = alertmanager
    x, y = _institution("i-x", "Inhibited Bank"), _institution("i-y", "Other Bank")
    _add(url, "OpenFinanceInstitutionOutage", severity="critical", **x)
    wait_for(lambda: _delivered(webhook, "OpenFinanceInstitutionOutage", "i-x"), "the outage page")

    _add(url, "OpenFinanceRepeatedOTP", severity="warning", **x)
    _add(url, "OpenFinanceFixableBacklogHigh", severity="info", **x)
    _add(url, "OpenFinanceRepeatedOTP", severity="warning", **y)
    wait_for(lambda: _delivered(webhook, "OpenFinanceRepeatedOTP", "i-y"), "Other Bank's OTP warning")

    for alertname in ("OpenFinanceRepeatedOTP", "OpenFinanceFixableBacklogHigh"):
        [held] = _api_alerts(url, alertname=alertname, institution_id="i-x")
        assert held["status"]["state"] == "suppressed", alertname
        assert held["status"]["inhibitedBy"], alertname
        assert _delivered(webhook, alertname, "i-x") == []
    [free] = _api_alerts(url, alertname="OpenFinanceRepeatedOTP", institution_id="i-y")
    assert free["status"]["state"] == "active"
    assert _delivered(webhook, "OpenFinanceRepeatedOTP", "i-y") == [CHAT]


def test_auth_failure_inhibits_the_same_sources_stale_data_page(alertmanager):
    url, webhook = alertmanager
    _add(url, "OpenFinanceUpstreamAuthFailing", severity="critical", source="auth-src", instance="a:1")
    wait_for(
        lambda: [a for a in webhook.alerts(PAGER) if a["labels"].get("source") == "auth-src"],
        "the auth page",
    )
    _add(url, "OpenFinanceDataStale", severity="critical", source="auth-src", instance="a:1")
    wait_for(
        lambda: _api_alerts(url, alertname="OpenFinanceDataStale", source="auth-src"),
        "the stale-data alert in alertmanager",
    )
    [held] = _api_alerts(url, alertname="OpenFinanceDataStale", source="auth-src")
    assert held["status"]["state"] == "suppressed"
