from __future__ import annotations

from collections.abc import Callable

import pytest

from exporter.metrics import build_metrics
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state.accounts import StateStore
from exporter.state.database import StateDatabase
from exporter.tracker import Tracker

T0 = 1_763_700_000.0  # a Friday night in November 2025
DAY = 86400.0


class Clock:
    """A hand-driven clock: tests move time, nothing sleeps."""

    def __init__(self, now: float = T0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """A tracker on a temporary SQLite file with its collectors and self-metrics."""

    def __init__(self, path, clock: Clock, **tracker_kwargs):
        self.path = path
        self.clock = clock
        self.wiring = build_metrics(lambda: self.tracker.snapshot, clock=clock)
        self.fleet, self.live = self.wiring.fleet, self.wiring.live
        self.metrics, self.exposition = self.wiring.agent, self.wiring.exposition
        self.store = StateStore(StateDatabase(path))
        self.tracker = Tracker(self.store, clock=clock, events=self.metrics, **tracker_kwargs)

    async def sweep(self, records: list[AccountStatus], *, complete: bool = True,
                    source: str = "fin", provider: str = "finicity") -> None:
        session = await self.tracker.begin(source, provider)
        await session.add(records)
        await session.finish(SweepReport(complete=complete))

    def value(self, name: str, **labels: str) -> float | None:
        return self.wiring.value(name, labels)

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        out = []
        for registry in (self.fleet, self.live):
            for family in registry.collect():
                out += [(dict(s.labels), s.value) for s in family.samples if s.name == name]
        return out


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def inbox(tmp_path):
    """The webhook inbox on a temporary state database."""
    from exporter.webhooks.inbox import WebhookInbox

    box = WebhookInbox(StateDatabase(tmp_path / "state.db"))
    await box.open()
    yield box
    await box.close()


@pytest.fixture
def harness(tmp_path, clock) -> Harness:
    h = Harness(tmp_path / "state.db", clock)
    yield h
    h.store.close()


@pytest.fixture
def acct(clock) -> Callable[..., AccountStatus]:
    """A Finicity account record at the current night, overridable field by field, valid as
    a source emits it (``code`` given as a number is its string; None is ``"NONE"``)."""

    def make(key: str = "a1", code: str | int | None = 0, *, inst: str = "4222", name: str = "FinBank",
             attempt: float | str | None = "now", success: float | str | None = "auto",
             source: str = "fin", provider: str = "finicity",
             consent_end: float | None = None) -> AccountStatus:
        attempt_ts = clock.now - 3600 if attempt == "now" else attempt
        if success == "auto":
            success_ts = attempt_ts if code in (0, "0", "CONNECTED") else None
        else:
            success_ts = success
        code = "NONE" if code is None else str(code)
        return AccountStatus(source, provider, key, inst, name, code, attempt_ts, success_ts,
                             consent_end=consent_end)

    return make
