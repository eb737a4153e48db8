"""Shared helpers for the alerting tests: paths, the generator module, the rules, processes."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "alerts"
RULES_FILE = ALERTS / "openfinance.rules.yml"
TEMPLATE_FILE = ALERTS / "openfinance.rules.template.yml"
PARAMS_FILE = ALERTS / "params.yml"
PROMTOOL_TESTS = sorted((ALERTS / "tests").glob("*.test.yml"))
ALERTMANAGER_EXAMPLE = ALERTS / "alertmanager.example.yml"
RUNBOOKS = REPO / "docs" / "runbooks" / "README.md"


GENERATOR = [sys.executable, "-m", "alerts.generate"]  # for run()


def load_rules(text: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text(encoding="utf-8") if text is None else text)


def alerting_rules(doc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    doc = load_rules() if doc is None else doc
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def recording_rules(doc: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    doc = load_rules() if doc is None else doc
    return [r for g in doc["groups"] for r in g["rules"] if "record" in r]


ALERT_NAMES = [r["alert"] for r in alerting_rules()]


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command (in the repository root unless ``cwd`` is given), capturing its output."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kwargs)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail the test naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)
