"""Connect Fix links (Finicity) and Connect widget URLs (MX) that the sandbox has handed out.

A link is an opaque random token under ``/connect/fix/<token>`` on the sandbox itself; what
it stands for (provider, connection, owner and login ids, the session's webhook settings)
stays here. Finicity links live ``connect.finicity_link_ttl_seconds`` (2 h) and may be
completed again unless ``singleUseUrl``; MX URLs live ``connect.mx_url_ttl_seconds``
(10 min) and serve one completion.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from exporter.sandbox.clock import SandboxClock
from exporter.sandbox.scenario import ConnectConfig

MAX_LINKS = 100_000  # the oldest are forgotten beyond this


@dataclass(slots=True)
class ConnectLink:
    token: str
    provider: str
    connection: int | None  # None: an MX widget URL without current_member_guid
    owner_id: str  # customerId / user_guid
    login_id: str | None  # institutionLoginId / member_guid
    institution: str
    issued_at: float
    expires_at: float
    single_use: bool
    redirect_uri: str | None = None
    webhook: str | None = None  # Finicity: this session's Connect events
    webhook_data: dict[str, Any] | None = None
    webhook_headers: dict[str, str] | None = None
    callback_payload: str | None = None  # MX: X-CALLBACK-PAYLOAD, echoed in its webhooks
    opened: int = 0
    completions: list[dict[str, Any]] = field(default_factory=list)

    def unusable(self, now: float) -> str | None:
        """Why the link cannot be used now (``expired`` / ``used``), or None."""
        if now >= self.expires_at:
            return "expired"
        if self.single_use and self.completions:
            return "used"
        return None

    def public(self, now: float) -> dict[str, Any]:
        """For GET /sandbox/connect (synthetic ids; the session's webhook data stays out)."""
        return {
            "token": self.token, "provider": self.provider, "owner_id": self.owner_id,
            "login_id": self.login_id, "institution": self.institution,
            "issued_at": self.issued_at, "expires_at": self.expires_at,
            "single_use": self.single_use, "state": self.unusable(now) or "open",
            "opened": self.opened, "has_webhook": self.webhook is not None,
            "completions": self.completions,
        }


class ConnectLinks:
    """Issued links by token, oldest first."""

    def __init__(self, clock: SandboxClock, config: ConnectConfig):
        self.clock = clock
        self.config = config
        self._links: OrderedDict[str, ConnectLink] = OrderedDict()
        self.issued = 0

    def issue(self, provider: str, connection: int | None, owner_id: str, login_id: str | None,
              institution: str, *, single_use: bool, **session: Any) -> ConnectLink:
        now = self.clock.now()
        ttl = (self.config.finicity_link_ttl_seconds if provider == "finicity"
               else self.config.mx_url_ttl_seconds)
        link = ConnectLink(secrets.token_urlsafe(18), provider, connection, owner_id, login_id,
                           institution, now, now + ttl, single_use, **session)
        self._links[link.token] = link
        self.issued += 1
        while len(self._links) > MAX_LINKS:
            self._links.popitem(last=False)
        return link

    def get(self, token: str) -> ConnectLink | None:
        return self._links.get(token)

    def all(self) -> list[ConnectLink]:
        return list(self._links.values())


def link_url(request: Request, link: ConnectLink) -> str:
    """The link's address on this sandbox (``/connect/fix/<token>``), as the caller reached it."""
    return f"{request.url.scheme}://{request.url.netloc}/connect/fix/{link.token}"


@dataclass(slots=True)
class FixRequest:
    """A repair request the partner (the agent's remediation loop) sent to its users."""

    id: str
    provider: str
    connection: int
    link: str | None
    received_night: int
    due_night: int | None  # None: this user never acts on it
    result: dict[str, Any] | None = None
    # What the request named (the sandbox's own synthetic ids), for tests and the curious.
    owner_id: str | None = None
    login_id: str | None = None
    institution_id: str | None = None
    kind: str | None = None
    code: str | None = None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "provider": self.provider, "link": self.link is not None,
                "owner_id": self.owner_id, "login_id": self.login_id,
                "institution_id": self.institution_id, "kind": self.kind, "code": self.code,
                "received_night": self.received_night, "due_night": self.due_night,
                "result": self.result}


class FixRequests:
    """Requests received at ``POST /sandbox/partner/fix-requests``, by id (deduplicated)."""

    def __init__(self) -> None:
        self._by_id: OrderedDict[str, FixRequest] = OrderedDict()

    def get(self, request_id: str) -> FixRequest | None:
        return self._by_id.get(request_id)

    def add(self, request: FixRequest) -> None:
        self._by_id[request.id] = request
        while len(self._by_id) > MAX_LINKS:
            self._by_id.popitem(last=False)

    def due(self, night: int) -> list[FixRequest]:
        return [r for r in self._by_id.values()
                if r.result is None and r.due_night is not None and r.due_night <= night]

    def all(self) -> list[FixRequest]:
        return list(self._by_id.values())
