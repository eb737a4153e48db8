"""Configuration of the push side: the webhook listener and each source's webhook secrets.

``Settings.webhooks`` (a :class:`WebhooksConfig`) switches the listener on; a source takes
part when its own ``webhooks:`` block is set (:class:`FinicityWebhookConfig`,
:class:`MxWebhookConfig`). Finicity Connect events are signed with the source's partner
secret, so nothing new is needed there; ``previous_secret`` keeps a rotated-out secret valid
for ``previous_secret_grace``. Secrets are ``SecretStr`` and may come from ``<field>_file``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from exporter.durations import non_negative_duration
from exporter.web.addresses import split_listen_address

Seconds = Annotated[float, BeforeValidator(non_negative_duration), Field(json_schema_extra={"format": "duration"})]
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{32,128}$")
_PEER_URL = re.compile(r"^https?://[^/?#@\s]+/?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _read_secret_files(data: Any, fields: tuple[str, ...]) -> Any:
    """Fill ``<field>`` from ``<field>_file`` when only the file is given (the value is never
    echoed in an error)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for name in fields:
        path = data.get(f"{name}_file")
        if path and not data.get(name):
            try:
                data[name] = Path(path).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{name}_file: cannot read file ({exc.strerror})") from None
    return data


class WebhooksConfig(_Strict):
    """The webhook listener (``webhooks:`` at the top level; off when absent)."""

    listen_address: str = ":9879"
    max_body_bytes: int = Field(262_144, ge=1024, le=16 * 1024 * 1024)
    read_timeout: Seconds = Field(10.0, description="Longest a client may take to send a body.")
    read_header_timeout: Seconds = Field(
        10.0, gt=0, description="Longest a client may take to send its request's headers.")
    max_connections: int = Field(1000, ge=1, description="Connections open at once; the next "
                                 "one gets 503.")
    concurrency: int = Field(4, ge=1, le=64, description="Owners re-read at the same time.")
    retry_backoff: Seconds = Field(2.0, description="First wait after a failed re-read (doubles).")
    retry_backoff_max: Seconds = 300.0
    give_up_after: Seconds = Field(
        21_600.0, description="Stop retrying an event this long after it arrived (the poll "
        "still sees the owner).")
    peers: list[str] = Field(
        default_factory=list, description="Base URLs of every shard's webhook listener, by "
        "shard index (this pod's own included): an event for another shard's owner is "
        "forwarded there. Empty: such events are ignored, left to the owner's poll.")

    @field_validator("peers")
    @classmethod
    def _peer_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not _PEER_URL.match(url):
                raise ValueError(f"{url!r} is not an http(s) base URL (no path, query or "
                                 "credentials)")
        return [url.rstrip("/") for url in v]

    @field_validator("listen_address")
    @classmethod
    def _address(cls, v: str) -> str:
        split_listen_address(v)  # raises ValueError with the reason
        return v


class FinicityWebhookConfig(_Strict):
    """A Finicity source's push settings (``sources[].webhooks``).

    Connect events are verified with the source's ``partner_secret``. After a rotation, put
    the old one in ``previous_secret``: it is accepted for ``previous_secret_grace`` counted
    from the first time this agent saw it (remembered in the state database). TxPush has no
    confirmed signature scheme, so its callback URL carries ``txpush_token`` (32–128 URL-safe
    characters, e.g. ``python -c 'import secrets; print(secrets.token_urlsafe(32))'``) and
    its payloads are only hints to re-read.
    """

    previous_secret: SecretStr | None = None
    previous_secret_file: Path | None = None
    previous_secret_grace: Seconds = 86_400.0
    txpush_token: SecretStr | None = None
    txpush_token_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return _read_secret_files(data, ("previous_secret", "txpush_token"))

    @field_validator("txpush_token")
    @classmethod
    def _unguessable(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not _TOKEN.match(v.get_secret_value()):
            raise ValueError("must be 32 to 128 characters of A-Z a-z 0-9 _ -")
        return v


class MxWebhookConfig(_Strict):
    """An MX source's push settings: the HTTP Basic credentials given to MX."""

    webhook_username: str = Field(min_length=1)
    webhook_password: SecretStr | None = None
    webhook_password_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _files(cls, data: Any) -> Any:
        return _read_secret_files(data, ("webhook_password",))

    @model_validator(mode="after")
    def _password_set(self) -> MxWebhookConfig:
        if self.webhook_password is None or not self.webhook_password.get_secret_value():
            raise ValueError("webhook_password (or webhook_password_file) is required")
        return self
