"""``remediation:`` in the configuration file (off unless ``enabled``).

Durations accept ``"90s"``, ``"24h"``, ``"7d"`` like the rest of the file. The secret signs
every request (``X-OpenFinance-Signature``) and every redirect token; it is read from
``secret_file`` (or ``OPENFINANCE_REMEDIATION__SECRET``) and never logged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from exporter.durations import non_negative_duration

_URL = re.compile(r"^https?://[^\s/]+")


_duration = non_negative_duration


class RemediationConfig(BaseModel):
    """How fix requests are made, delivered, linked and held back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    endpoint: str | None = Field(None, description="the partner's receiver (POST, JSON)")
    secret: SecretStr | None = None
    secret_file: Path | None = None
    link: Literal["none", "generate", "redirect"] = "none"
    public_url: str | None = Field(
        None, description="base URL under which the webhook listener's /fix/<token> is reachable")
    link_ttl: float = Field(7 * 86400.0, description="lifetime of a redirect token")
    retry_for: float = 86400.0
    abandon_after: float = Field(
        7 * 86400.0, description="after retry_for, a still-broken episode counts as abandoned")
    min_broken_for: float = 0.0
    renew_before: float = Field(
        14 * 86400.0, description="send a consent_renewal request this long before a login's "
        "consent ends (Finicity authorizationEndDate); 0s: none")
    backfill: bool = False
    backfill_per_hour: int = Field(1000, ge=1)
    storm_min: int = Field(50, ge=1)
    storm_share: float = Field(0.05, ge=0, le=1)
    max_concurrency: int = Field(8, ge=1, le=256)
    sweep_deliveries_per_second: float = Field(
        100.0, ge=0, description="deliveries started per second while a sweep of this agent "
        "runs (0: none until it ends); no limit otherwise")
    timeout: float = 10.0
    backoff_base: float = 2.0
    backoff_max: float = 3600.0
    evaluate_interval: float = 30.0
    click_rate_per_token: int = Field(
        10, ge=1, description="redirect clicks allowed per token and minute")
    click_rate_global: float = Field(20.0, gt=0, description="redirect clicks per second, all tokens")
    click_rate_invalid: float = Field(
        20.0, gt=0, description="answers per second to invalid, expired or malformed tokens, "
        "all together (apart from the budget of genuine ones)")
    listen_address: str | None = Field(
        None, description="serve /fix/<token> on a listener of its own (the webhook listener "
        "serves it whenever webhooks are configured)")

    _durations = field_validator(
        "link_ttl", "retry_for", "abandon_after", "min_broken_for", "renew_before", "timeout",
        "backoff_base",
        "backoff_max", "evaluate_interval", mode="before")(_duration)

    @field_validator("endpoint", "public_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not _URL.match(v):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> RemediationConfig:
        if not self.enabled:
            return self
        missing = []
        if not self.endpoint:
            missing.append("endpoint")
        if self.secret is None and self.secret_file is None:
            missing.append("secret_file (or secret)")
        if self.link == "redirect" and not self.public_url:
            missing.append("public_url (link: redirect)")
        if missing:
            raise ValueError("enabled needs " + ", ".join(missing))
        try:
            self.secret_bytes()
        except OSError as exc:
            raise ValueError(f"secret_file: cannot read ({exc.strerror})") from None
        return self

    def secret_bytes(self) -> bytes:
        """The signing secret; raises ``OSError`` when ``secret_file`` cannot be read."""
        if self.secret is not None:
            return self.secret.get_secret_value().encode()
        if self.secret_file is None:
            raise ValueError("remediation has no secret")
        text = self.secret_file.read_text(encoding="utf-8").strip()
        if not text:
            raise ValueError(f"{self.secret_file}: empty secret")
        return text.encode()
