"""Shared fakes for the repair-loop unit tests (no tests here): account events as the
tracker emits them, a hand-driven clock, a scripted receiver and a recording observer."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import httpx

from exporter.remediation.config import RemediationConfig
from exporter.remediation.loop import RepairLoop
from exporter.state.database import StateDatabase
from exporter.tracker.events import AccountEvent, EventKind
from tests.unit.conftest import DAY, T0, Clock

__all__ = ["DAY", "T0", "Clock"]

HOUR = 3600.0
SECRET = "s3cret-for-tests"

CATEGORY = {"0": "ok", "103": "credentials", "108": "user_action", "185": "mfa", "187": "mfa",
            "901": "institution", "913": "account_closed", "945": "oauth", "102": "institution",
            "CHALLENGED": "mfa", "DENIED": "credentials", "CONNECTED": "ok", "CLOSED": "account_closed"}
FIXABLE = {"103", "108", "109", "185", "187", "945", "946", "947", "948", "CHALLENGED", "DENIED"}


def ev(kind: str, code: str = "103", *, key: str = "a1", owner: str | None = "c1",
       login: str | None = "l1", inst: str = "4222", source: str = "fin",
       provider: str = "finicity", at: float = T0, since: float | None = None,
       otp: bool = False, previous: str | None = None) -> AccountEvent:
    category = CATEGORY.get(code, "unknown")
    broken = category != "ok"
    return AccountEvent(EventKind(kind), source, provider, key, owner, login, inst, "FinBank", code, category,
              code in FIXABLE, otp, previous, CATEGORY.get(previous) if previous else None,
              (since if since is not None else at) if broken else None, at)


def broke(code: str = "103", **kw) -> list[AccountEvent]:
    """What the tracker emits when an account enters a fixable code."""
    return [ev("entered", code, **kw), ev("became_fixable", code, **kw)]


def healed(**kw) -> list[AccountEvent]:
    return [ev("left", "0", **kw), ev("back_to_ok", "0", **kw)]


@dataclass
class Agg:
    accounts: tuple = ()


@dataclass
class Snap:
    sources: dict = field(default_factory=dict)


def snapshot(per_institution: dict[tuple[str, str], dict[str, int]]) -> Snap:
    """{(source, institution_id): {category: accounts}} → a Tracker.snapshot() look-alike."""
    rows = defaultdict(list)
    for (source, inst), cats in per_institution.items():
        for category, n in cats.items():
            rows[source].append((inst, "FinBank", "x", category, n))
    return Snap({s: Agg(tuple(r)) for s, r in rows.items()})


class FakeSource:
    def __init__(self, fail: bool = False):
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    async def fix_link(self, owner_id: str, login_id: str) -> str:
        self.calls.append((owner_id, login_id))
        if self.fail:
            raise RuntimeError("upstream down")
        return f"https://connect.example/fix?n={len(self.calls)}"


class Recorder:
    """A RemediationObserver that keeps every call."""

    def __init__(self):
        self.requests: list[tuple[str, str, str, str]] = []
        self.outcomes: list[tuple[str, str, str]] = []
        self.resolutions: list[tuple[str, str, str, float]] = []
        self.pending_now: dict = {}
        self.held_now: dict = {}
        self.ignored_events: list[tuple[str, str]] = []
        self.funnel: list[tuple[str, str, str, str, str, str | None]] = []
        self.clicks: list[str] = []

    def fix_request(self, source, provider, kind, result):
        self.requests.append((source, provider, kind, result))

    def fix_outcome(self, source, provider, outcome):
        self.outcomes.append((source, provider, outcome))

    def fix_resolution(self, source, provider, category, seconds):
        self.resolutions.append((source, provider, category, seconds))

    def fix_pending(self, counts):
        self.pending_now = dict(counts)

    def fix_held(self, counts):
        self.held_now = dict(counts)

    def fix_event_ignored(self, source, reason):
        self.ignored_events.append((source, reason))

    def fix_click(self, result):
        self.clicks.append(result)

    def fix_institution(self, source, provider, institution_id, institution, code, outcome):
        self.funnel.append((source, provider, institution_id, institution, code, outcome))

    def steps(self, outcome: str | None = None) -> list[tuple[str, str, str]]:
        """(institution_id, code, outcome) of the funnel steps counted (not created)."""
        return [(f[2], f[4], f[5]) for f in self.funnel
                if f[5] is not None and (outcome is None or f[5] == outcome)]

    def results(self, result: str) -> int:
        return sum(1 for r in self.requests if r[3] == result)


class Receiver:
    """The partner's endpoint behind an httpx MockTransport: answers from a script."""

    def __init__(self, *answers: httpx.Response | int):
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if not self.answers:
            return httpx.Response(200)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer) if isinstance(answer, int) else answer


def config(**overrides) -> RemediationConfig:
    base = dict(enabled=True, endpoint="http://partner.test/fix", secret=SECRET,
                listen_address="127.0.0.1:9879")
    base.update(overrides)
    return RemediationConfig(**base)


def build_loop(tmp_path, clock: Clock, receiver: Receiver | None = None, *,
               snap: Snap | None = None, source: FakeSource | None = None,
               observer: Recorder | None = None, rand=lambda: 1.0, **overrides) -> RepairLoop:
    client = httpx.AsyncClient(transport=httpx.MockTransport(receiver or Receiver()))
    holder = {"snap": snap or Snap()}
    loop = RepairLoop(config(**overrides), StateDatabase(tmp_path / "state.db"),
                      sources={"fin": source or FakeSource(), "mxs": source or FakeSource()},
                      snapshot=lambda: holder["snap"], clock=clock,
                      observer=observer or Recorder(), client=client, rand=rand,
                      new_id=lambda: f"req-{uuid.uuid4().hex[:12]}")
    loop.test_snapshot = holder
    return loop


async def feed(loop: RepairLoop, events) -> None:
    """Hand events to the loop as the tracker does, and wait until they are folded."""
    await loop.on_events(events)
    await loop.drained()


async def finished(loop: RepairLoop, source: str = "fin", complete: bool = True) -> None:
    """A sweep of ``source`` ended (as the sweep runner reports it); waits until noted."""
    loop.sweep_finished(source, complete)
    await loop.drained()
