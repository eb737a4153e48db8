"""Test doubles shared by the source tests: a fake clock, an observer and a sink."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from exporter.records import AccountStatus

NOW = 1_700_000_000.0
FIXTURES = Path(__file__).parents[1] / "fixtures"


class FakeTime:
    """Wall clock, monotonic clock and sleep in one: sleeping advances time and is recorded."""

    def __init__(self, now: float = NOW):
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Recorder:
    """An UpstreamObserver that remembers every call."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.retries: list[str] = []
        self.invalid: list[str] = []
        self.auth_failures: list[str] = []
        self.drift: list[str] = []
        self.versions: list[tuple[str, str]] = []

    def request(self, source, endpoint, status_code, duration):
        self.requests.append((endpoint, status_code))

    def retry(self, source, reason):
        self.retries.append(reason)

    def invalid_record(self, source, reason):
        self.invalid.append(reason)

    def auth_failure(self, source):
        self.auth_failures.append(source)

    def upstream_drift(self, source, provider, kind):
        self.drift.append(kind)

    def upstream_api(self, source, provider, version):
        self.versions.append((provider, version))


class Sink:
    """A SweepSink that keeps the chunks it is given and the progress reported."""

    def __init__(self):
        self.chunks: list[list[AccountStatus]] = []
        self.progress_calls: list[tuple[int, int | None]] = []

    async def add(self, records):
        self.chunks.append(list(records))

    def progress(self, done, total):
        self.progress_calls.append((done, total))

    @property
    def records(self) -> list[AccountStatus]:
        return [r for chunk in self.chunks for r in chunk]

    def by_key(self) -> dict[str, AccountStatus]:
        return {r.account_key: r for r in self.records}


def load_fixture(provider: str, name: str) -> dict:
    return json.loads((FIXTURES / provider / name).read_text())
