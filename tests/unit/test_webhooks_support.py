"""Shared pieces of the webhook unit tests (no tests here): the shared clock, a recording observer, fakes for the
source and the tracker (INTERFACES.md §2/§3), signed bodies."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import Sequence

from exporter.records import AccountStatus
from tests.unit.conftest import Clock

__all__ = ["Clock"]

SECRET = "partner-secret-current"
OLD_SECRET = "partner-secret-previous"
TOKEN = "tok_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6"
CUSTOMER = "6030781868"


class RecordingObserver:
    def __init__(self):
        self.events: Counter[tuple[str, str, str]] = Counter()
        self.refreshes: list[tuple[str, float]] = []
        self.enabled: list[str] = []
        self.failures: Counter[tuple[str, str]] = Counter()
        self.forwards: list[tuple[str, float]] = []
        self.forward_failures: list[tuple[str, str]] = []

    def webhooks_enabled(self, source: str) -> None:
        self.enabled.append(source)

    def webhook_event(self, source: str, kind: str, result: str) -> None:
        self.events[(source, kind, result)] += 1

    def push_refresh(self, source: str, seconds: float) -> None:
        self.refreshes.append((source, seconds))

    def push_refresh_failed(self, source: str, result: str, events: int) -> None:
        self.failures[(source, result)] += events

    def webhook_forwarded(self, source: str, seconds: float) -> None:
        self.forwards.append((source, seconds))

    def webhook_forward_failed(self, source: str, reason: str) -> None:
        self.forward_failures.append((source, reason))


class FakeSource:
    """``refresh_owner`` returns one record per call and remembers who was asked."""

    def __init__(self, name: str = "finicity-prod", provider: str = "finicity",
                 owned: set[str] | None = None):
        self.name = name
        self.provider = provider
        self.owned = owned
        self.calls: list[str] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    def owns(self, owner_id: str) -> bool:
        return self.owned is None or owner_id in self.owned

    async def refresh_owner(self, owner_id: str) -> list[AccountStatus]:
        self.calls.append(owner_id)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_next:
                self.fail_next -= 1
                raise RuntimeError("upstream said no")
            return [AccountStatus(self.name, self.provider, f"acct-{owner_id}", "101732",
                                  "FinBank", "185", owner_id=owner_id, login_id="1")]
        finally:
            self.in_flight -= 1


class FakeTracker:
    """Records each apply; ``gate`` holds applies until set, ``applying`` counts those held."""

    def __init__(self):
        self.applied: list[tuple[str, str, list[AccountStatus]]] = []
        self.fail_next = 0
        self.gate: asyncio.Event | None = None
        self.applying = 0

    async def apply_records(self, source: str, provider: str,
                            records: Sequence[AccountStatus]) -> None:
        if self.gate is not None:
            self.applying += 1
            try:
                await self.gate.wait()
            finally:
                self.applying -= 1
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("database is locked")
        self.applied.append((source, provider, list(records)))


def compact(doc) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def connect_event(event_type: str = "unableToConnect", customer: str = CUSTOMER,
                  event_id: str = "1688829066253-d10dac58486e33bf419919dc") -> bytes:
    return compact({"customerId": customer, "eventType": event_type, "eventId": event_id,
                    "payload": {"institutionId": "102176", "code": 185}})


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
