"""A real Prometheus, a real Alertmanager and a local webhook receiver for integration tests.

Built on :mod:`tests.integration.procs`: every process listens on a free port on 127.0.0.1,
writes its output to a log file in the test's tmp dir, and is stopped by pid.

    receiver = WebhookReceiver()
    am = AlertmanagerProc(tmp, alertmanager_config(tmp / "am.yml", receiver.url))
    prom = PrometheusProc(tmp, [agent.url], rule_files=[render_rules(tmp / "r.yml", short=True)],
                          alertmanager_url=am.url)
    prom.wait_for_series("openfinance_accounts")
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.procs import (
    REPO,
    AgentProc,
    Proc,
    Sandbox,
    agent_config,
    free_port,
    wait_for,
)

ALERTS_DIR = REPO / "alerts"
DASHBOARDS_DIR = REPO / "dashboards"
ALERTMANAGER_EXAMPLE = ALERTS_DIR / "alertmanager.example.yml"
EXPORTER_JOB = "openfinance-exporter"  # alerts/generate.py DEFAULTS["exporter_job"]


def alerts_generator() -> ModuleType:
    from alerts import generate

    return generate


def dashboards_generator() -> ModuleType:
    from dashboards import generate  # needs grafana-foundation-sdk (the dashboards extra)

    return generate


def check_tool(args: Sequence[str]) -> None:
    """Run promtool/amtool; fail with its output when it rejects the file."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"


def render_rules(path: Path, *, short: bool = True, params: dict[str, Any] | None = None) -> Path:
    """The generator's rules (``--short-durations`` by default) written to ``path``, promtool-checked."""
    generate = alerts_generator()
    merged = {**(generate.SHORT_DURATIONS if short else {}), **(params or {})}
    path.write_text(generate.render(merged), encoding="utf-8")
    check_tool(["promtool", "check", "rules", str(path)])
    return path


def alertmanager_config(path: Path, receiver_url: str, *, group_wait: str = "1s",
                        group_interval: str = "1s", repeat_interval: str | None = None,
                        example: Path = ALERTMANAGER_EXAMPLE) -> Path:
    """The example config with every webhook pointed at ``receiver_url``/<receiver name> and
    the timers shortened on every route, amtool-checked.

    Routes, matchers, grouping and inhibition stay as the example has them.
    """
    cfg = yaml.safe_load(example.read_text(encoding="utf-8"))
    base = receiver_url.rstrip("/")
    for receiver in cfg["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"{base}/{urlsplit(hook['url']).path.lstrip('/')}"

    def shorten(route: dict[str, Any], top: bool) -> None:
        if top or "group_wait" in route:
            route["group_wait"] = group_wait
        if top or "group_interval" in route:
            route["group_interval"] = group_interval
        if repeat_interval is not None and (top or "repeat_interval" in route):
            route["repeat_interval"] = repeat_interval
        for child in route.get("routes", []):
            shorten(child, False)

    shorten(cfg["route"], True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    check_tool(["amtool", "check-config", str(path)])
    return path


class WebhookReceiver:
    """Collects what Alertmanager posts; the receiver is the last part of the URL path."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._posts: list[dict[str, Any]] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    payload = json.loads(body)
                except ValueError:
                    payload = {"unparsable": body.decode(errors="replace")}
                with store._lock:
                    store._posts.append({"path": self.path.strip("/"), "at": time.monotonic(),
                                         "payload": payload})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="webhook-receiver")
        self._thread.start()

    def posts(self) -> list[dict[str, Any]]:
        """Every notification so far: ``{"path", "at", "payload"}`` in arrival order."""
        with self._lock:
            return list(self._posts)

    def alerts(self, alertname: str | None = None, status: str | None = None) -> list[dict]:
        """Every alert of every notification, flattened, with ``path`` (the URL's receiver)
        and ``receiver`` (the payload's) added; in arrival order."""
        out = []
        for post in self.posts():
            payload = post["payload"]
            for alert in payload.get("alerts", []):
                if alertname is not None and alert["labels"].get("alertname") != alertname:
                    continue
                if status is not None and alert.get("status") != status:
                    continue
                out.append({**alert, "path": post["path"], "receiver": payload.get("receiver"),
                            "at": post["at"]})
        return out

    def summary(self) -> str:
        """One line per distinct (receiver, status, alert): how often it came and its latest
        description, for assertion messages."""
        seen: dict[tuple, list] = {}
        for a in self.alerts():
            key = (a["path"], a["status"], tuple(sorted(a["labels"].items())))
            entry = seen.setdefault(key, [0, ""])
            entry[0] += 1
            entry[1] = a["annotations"].get("description", "")
        lines = [f"  {path} {status} x{n} {dict(labels)}\n      latest description: {text[:200]!r}"
                 for (path, status, labels), (n, text) in seen.items()]
        head = f"webhook receiver: {len(self.posts())} notifications"
        return "\n".join([head, *lines])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class PromQLError(AssertionError):
    pass


class PrometheusProc(Proc):
    """``prometheus`` scraping ``targets`` (base URLs) as job ``openfinance-exporter`` every
    second, evaluating ``rule_files`` every second, alerting ``alertmanager_url``."""

    def __init__(self, work_dir: Path, targets: Iterable[str], *,
                 rule_files: Iterable[Path] = (), alertmanager_url: str | None = None,
                 interval: str = "1s", job: str = EXPORTER_JOB, name: str = "prometheus"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval,
                       "scrape_timeout": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{
                "job_name": job,
                "static_configs": [{"targets": [urlsplit(t).netloc for t in targets]}],
            }],
        }
        if alertmanager_url is not None:
            config["alerting"] = {"alertmanagers": [
                {"static_configs": [{"targets": [urlsplit(alertmanager_url).netloc]}]}]}
        self.config_path = work_dir / f"{name}.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        check_tool(["promtool", "check", "config", str(self.config_path)])
        super().__init__(name, [
            "prometheus", f"--config.file={self.config_path}",
            f"--storage.tsdb.path={work_dir / f'{name}-tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--rules.alert.resend-delay=1s",
            "--log.level=info",
        ], work_dir)
        self.started = time.time()
        self._client = httpx.Client(base_url=self.url, timeout=30)
        try:
            wait_for(lambda: self._client.get("/-/ready").status_code == 200,
                     what=f"Prometheus to be ready\n{self.log()[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def stop(self, *args: Any, **kwargs: Any) -> int | None:
        self._client.close()
        return super().stop(*args, **kwargs)

    def _get(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self._client.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise PromQLError(f"GET {path} {params}: HTTP {response.status_code} "
                              f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query; the result as a list of series (a scalar becomes one unlabelled series)."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        data = self._get("/api/v1/query_range",
                         {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}",
                          "step": f"{step:g}"})
        return data["result"]

    def value(self, expr: str) -> float | None:
        """The single value of an instant query, None when it returns nothing."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} returned {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    def label_values(self, label: str, match: str) -> list[str]:
        return self._get(f"/api/v1/label/{label}/values", {"match[]": match})

    def alerts(self) -> list[dict[str, Any]]:
        """Prometheus' pending and firing alerts."""
        return self._get("/api/v1/alerts")["alerts"]

    def rule_groups(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/rules")["groups"]

    def active_alertmanagers(self) -> list[str]:
        return [a["url"] for a in self._get("/api/v1/alertmanagers")["activeAlertmanagers"]]

    def wait_for_series(self, expr: str, timeout: float = 60, at_least: int = 1) -> list[dict]:
        """Poll an instant query until it returns ``at_least`` series; return them."""
        found: list[dict] = []

        def check() -> bool:
            found[:] = self.query(expr)
            return len(found) >= at_least

        wait_for(check, timeout, what=f"{at_least} series from {expr!r}", interval=0.25)
        return found

    def wait_for_evaluations(self, count: int = 2, timeout: float = 30) -> None:
        """Wait until every rule group has been evaluated ``count`` more times from now."""
        def last_evaluations() -> dict[str, float]:
            out = {}
            for group in self.rule_groups():
                stamp = group.get("lastEvaluation", "")
                out[group["name"]] = _rfc3339(stamp) if stamp else 0.0
            return out

        start = time.time()
        interval = min((g.get("interval", 1) for g in self.rule_groups()), default=1)
        wait_for(lambda: all(t >= start + (count - 1) * interval
                             for t in last_evaluations().values()),
                 timeout, what=f"{count} rule evaluations", interval=0.2)

    def rule_health(self) -> list[str]:
        """Rules that Prometheus reports as unhealthy, with their error."""
        return [f"{rule['name']}: {rule.get('lastError')}"
                for group in self.rule_groups() for rule in group["rules"]
                if rule.get("health") not in ("ok", "unknown")]


def _rfc3339(stamp: str) -> float:
    """Prometheus' ``lastEvaluation`` (nanosecond precision, ``Z``) as epoch seconds."""
    return datetime.fromisoformat(stamp).timestamp()


class AlertmanagerProc(Proc):
    """``prometheus-alertmanager`` on a free loopback port with no cluster listener."""

    def __init__(self, work_dir: Path, config: Path, name: str = "alertmanager"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(name, [
            "prometheus-alertmanager", f"--config.file={config}",
            f"--storage.path={work_dir / f'{name}-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=info",
        ], work_dir)
        try:
            wait_for(lambda: httpx.get(f"{self.url}/-/ready").status_code == 200,
                     what=f"Alertmanager to be ready\n{self.log()[-3000:]}")
        except BaseException:
            self.stop()
            raise

    def alerts(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/api/v2/alerts", timeout=10).json()


def logs_tail(procs: Iterable[Proc | None], lines: int = 40) -> str:
    """The last ``lines`` lines of each process's log, for assertion messages."""
    parts = []
    for proc in procs:
        if proc is None:
            continue
        tail = proc.log().splitlines()[-lines:]
        parts.append(f"--- {proc.name} (exit {proc.popen.poll()}) {proc.log_path}\n"
                     + "\n".join(tail))
    return "\n".join(parts)


def stop_all(procs: Iterable[Proc | None]) -> None:
    """Stop each process by its pid (reverse start order is the caller's business)."""
    errors = []
    for proc in procs:
        if proc is None:
            continue
        try:
            proc.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(f"{proc.name}: {exc!r}")
    assert not errors, "could not stop: " + "; ".join(errors)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """name → [(labels, value)] for every sample the agent at ``url`` exposes.

    Asks for an uncompressed body, so that counting sweeps does not depend on the gzip path
    (which once served two concatenated gzip members that httpx and curl cut at the first).
    """
    response = httpx.get(f"{url}/metrics", headers={"Accept-Encoding": "identity"}, timeout=30)
    response.raise_for_status()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


class MonitoredSandbox:
    """The sandbox, the agent sweeping it every ``interval`` seconds, a Prometheus scraping
    the agent and, with ``receiver``, an Alertmanager running the example routing that
    notifies it. ``stop()`` stops them all by pid, last started first.

    Every night must be seen by a sweep (streaks count distinct attempts), so
    :meth:`advance` moves one night at a time and waits for sweeps that started after it.
    """

    def __init__(self, work_dir: Path, scenario: dict[str, Any] | None = None, *,
                 interval: float = 1, rule_files: Iterable[Path] = (),
                 receiver: WebhookReceiver | None = None,
                 alertmanager_options: dict[str, Any] | None = None):
        self.work_dir = work_dir
        self.receiver = receiver
        self.sandbox: Sandbox | None = None
        self.agent: AgentProc | None = None
        self.alertmanager: AlertmanagerProc | None = None
        self.prometheus: PrometheusProc | None = None
        try:
            scenario_path = None
            if scenario is not None:
                scenario_path = work_dir / "scenario.yml"
                scenario_path.write_text(yaml.safe_dump(scenario), encoding="utf-8")
            self.sandbox = Sandbox(work_dir, scenario_path)
            config = agent_config(work_dir / "agent.yml", self.sandbox.url,
                                  work_dir / "state.db", interval=interval)
            self.agent = AgentProc(work_dir, config)
            am_url = None
            if receiver is not None:
                am_config = alertmanager_config(work_dir / "alertmanager.yml", receiver.url,
                                                **(alertmanager_options or {}))
                self.alertmanager = AlertmanagerProc(work_dir, am_config)
                am_url = self.alertmanager.url
            self.prometheus = PrometheusProc(work_dir, [self.agent.url], rule_files=rule_files,
                                             alertmanager_url=am_url)
        except BaseException:
            self.stop()
            raise
        self.sources = ("finicity-sandbox", "mx-sandbox")  # procs.agent_config's names

    @property
    def procs(self) -> list[Proc | None]:
        return [self.sandbox, self.agent, self.alertmanager, self.prometheus]

    def sweeps_done(self) -> dict[str, float]:
        """Finished sweeps (success or partial) per source."""
        assert self.agent is not None
        got = dict.fromkeys(self.sources, 0.0)
        for labels, value in scrape(self.agent.url).get("openfinance_sweeps_total", []):
            if labels["result"] in ("success", "partial") and labels["source"] in got:
                got[labels["source"]] += value
        return got

    def wait_fresh_sweep(self, timeout: float = 60) -> None:
        """Wait until every source finished a sweep that started after this call."""
        before = self.sweeps_done()
        # A sweep running now counts once when it ends; the one after it started later.
        wait_for(lambda: all(n >= before[s] + 2 for s, n in self.sweeps_done().items()),
                 timeout, what=f"two more sweeps of each source than {before}", interval=0.2)

    def advance(self, nights: int = 1) -> dict[str, Any]:
        """Move the sandbox ``nights`` nights, one at a time, each seen by a complete sweep;
        return the sandbox state at the end."""
        assert self.sandbox is not None
        state: dict[str, Any] = {}
        for _ in range(nights):
            state = self.sandbox.advance(1)
            self.wait_fresh_sweep()
        return state

    def scraped_after_sweep(self, timeout: float = 30) -> None:
        """Wait until Prometheus holds the agent's current exposition (its sweep counters)."""
        assert self.prometheus is not None
        done = self.sweeps_done()

        def check() -> bool:
            assert self.prometheus is not None
            for source, n in done.items():
                got = self.prometheus.value(
                    f'sum(openfinance_sweeps_total{{source="{source}",result=~"success|partial"}})')
                if got is None or got < n:
                    return False
            return True

        wait_for(check, timeout, what="Prometheus to scrape the latest sweep", interval=0.25)

    def diagnostics(self, lines: int = 40) -> str:
        """Receiver payloads, Prometheus' alerts and every process's log tail."""
        parts = []
        if self.receiver is not None:
            parts.append(self.receiver.summary())
        if self.prometheus is not None and self.prometheus.popen.poll() is None:
            try:
                alerts = [(a["labels"].get("alertname"), a["state"],
                           a["labels"].get("institution_id"), a["value"])
                          for a in self.prometheus.alerts()]
                parts.append(f"prometheus alerts: {alerts}")
                parts.append(f"unhealthy rules: {self.prometheus.rule_health()}")
            except (httpx.HTTPError, AssertionError) as exc:
                parts.append(f"prometheus alerts: unavailable ({exc!r})")
        parts.append(logs_tail(self.procs, lines))
        return "\n".join(parts)

    def stop(self) -> None:
        stop_all(reversed(self.procs))
