"""Agent configuration: a YAML file validated by pydantic, overridable from the environment.

Every model forbids unknown keys so a typo is an error, not a silent default. Secrets are
``SecretStr`` and come from the file, from ``<field>_file`` (a path, e.g. a mounted Secret),
or from ``OPENFINANCE_SOURCE_<NAME>_<FIELD>`` (``NAME`` upper-cased, non-alphanumerics as
``_``). Other settings can be overridden with ``OPENFINANCE_<SECTION>__<KEY>``, for example
``OPENFINANCE_STATE__PATH=/data/state.db``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from exporter.durations import non_negative_duration
from exporter.health.config import HealthConfig
from exporter.remediation.config import RemediationConfig
from exporter.routing.config import RoutingConfig
from exporter.webhooks.config import FinicityWebhookConfig, MxWebhookConfig, WebhooksConfig

ENV_PREFIX = "OPENFINANCE_"
_duration_validator = non_negative_duration


Duration = Annotated[float, Field(json_schema_extra={"format": "duration"})]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScheduleConfig(_Strict):
    """Either an interval with jitter, or a cron expression (5 fields, the agent's time zone)."""

    interval: Duration | None = 3600.0
    jitter: Duration = 300.0
    cron: str | None = None
    timezone: str = "UTC"
    run_at_start: bool = True

    _check_durations = field_validator("interval", "jitter", mode="before")(
        lambda v: None if v is None else _duration_validator(v)
    )

    @field_validator("cron")
    @classmethod
    def _cron_fields(cls, v: str | None) -> str | None:
        if v is not None and len(v.split()) != 5:
            raise ValueError("cron needs 5 fields: minute hour day month day_of_week")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> ScheduleConfig:
        if self.cron is None and (self.interval is None or self.interval <= 0):
            raise ValueError("set interval (> 0) or cron")
        return self


class HttpConfig(_Strict):
    """How a source talks to its upstream."""

    timeout: Duration = 30.0
    connect_timeout: Duration = 10.0
    max_concurrency: int = Field(8, ge=1, le=256)
    rate_limit_per_second: float = Field(20.0, gt=0)
    rate_limit_burst: int = Field(20, ge=1)
    max_retries: int = Field(4, ge=0, le=20)
    backoff_base: Duration = 0.5
    backoff_max: Duration = 30.0
    http2: bool = False
    verify_tls: bool = True

    _check_durations = field_validator(
        "timeout", "connect_timeout", "backoff_base", "backoff_max", mode="before"
    )(_duration_validator)


SHARD_INDEX_ENV = f"{ENV_PREFIX}SHARD_INDEX"


def shard_index_auto(env: Mapping[str, str] | None = None, hostname: str | None = None) -> int:
    """``index: auto``: ``OPENFINANCE_SHARD_INDEX``, else the ordinal of a StatefulSet pod's
    host name ``<name>-<ordinal>`` (as kube-state-metrics does)."""
    env = os.environ if env is None else env
    value = env.get(SHARD_INDEX_ENV, "").strip()
    if value:
        if not value.isdigit():
            raise ValueError(f"auto: {SHARD_INDEX_ENV}={value!r} is not a whole number")
        return int(value)
    hostname = socket.gethostname() if hostname is None else hostname
    match = re.search(r"-(\d+)$", hostname.split(".", 1)[0])
    if match is None:
        raise ValueError(f"auto needs {SHARD_INDEX_ENV} or a host name ending in "
                         f"-<ordinal> (a StatefulSet pod); this host is {hostname!r}")
    return int(match[1])


class ShardConfig(_Strict):
    """Split customers between replicas by a stable hash: this replica takes ``index`` of ``count``.

    ``index: auto`` takes it from the environment or the pod's ordinal (:func:`shard_index_auto`).
    """

    index: int = Field(0, ge=0)
    count: int = Field(1, ge=1)

    _auto = field_validator("index", mode="before")(
        lambda v: shard_index_auto() if v == "auto" else v)

    @model_validator(mode="after")
    def _index_in_range(self) -> ShardConfig:
        if self.index >= self.count:
            raise ValueError(f"index must be < count ({self.count})")
        return self


class _SourceBase(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")
    base_url: str
    schedule: ScheduleConfig = ScheduleConfig()
    http: HttpConfig = HttpConfig()
    shard: ShardConfig = ShardConfig()
    institution_cache_ttl: Duration = 86400.0
    page_size: int = Field(1000, ge=1, le=1000)

    _check_ttl = field_validator("institution_cache_ttl", mode="before")(_duration_validator)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not re.match(r"^https?://[^\s/]+", v):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/")

    CREDENTIALS: ClassVar[tuple[str, ...]] = ()
    """The credentials a source of this provider needs: each is required, may come from the
    per-source environment variable, and a secret one from ``<field>_file`` too."""
    SECRETS: ClassVar[tuple[str, ...]] = ()
    """Which of :attr:`CREDENTIALS` are secrets (``SecretStr``, never logged)."""

    def secret_fields(self) -> tuple[str, ...]:
        return self.SECRETS

    def require_credentials(self) -> None:
        """``ValueError`` naming every credential when one is missing (a source built
        without :func:`load_config`)."""
        if any(getattr(self, field) is None for field in self.CREDENTIALS):
            names = self.CREDENTIALS
            listed = ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]
            raise ValueError(f"source {self.name}: {listed} are required")


class FinicitySourceConfig(_SourceBase):
    """Mastercard Open Finance US (the Finicity API)."""

    CREDENTIALS = ("app_key", "partner_id", "partner_secret")
    SECRETS = ("app_key", "partner_secret")

    provider: Literal["finicity"]
    base_url: str = "https://api.finicity.com"
    app_key: SecretStr | None = None
    app_key_file: Path | None = None
    partner_id: str | None = None
    partner_secret: SecretStr | None = None
    partner_secret_file: Path | None = None
    customer_type: Literal["active", "testing", "all"] = "active"
    simple_accounts: bool = False
    token_renew_after: Duration = 5400.0
    fix_redirect_uri: str | None = None  # Connect Fix: where the user lands afterwards
    fix_webhook: str | None = None  # Connect Fix: where Connect posts the session's events
    institution_status_refresh: Duration = 900.0  # re-read declared statuses; 0: off
    webhooks: FinicityWebhookConfig | None = None

    _check_renew = field_validator("token_renew_after", "institution_status_refresh",
                                   mode="before")(_duration_validator)


MxProduct = Literal["account_verification", "identity_verification", "transactions",
                   "transaction_history", "statements", "investments", "rewards"]
"""v20250224's ``SupportedProducts``: what a widget's ``data_request`` may ask for."""


class MxSourceConfig(_SourceBase):
    """MX Platform API: v20250224 (``Accept-Version: v20250224``, ``Accept:
    application/json``) unless ``api_version`` pins v20111101 for a partner not yet migrated."""

    CREDENTIALS = ("client_id", "api_key")
    SECRETS = ("api_key",)

    provider: Literal["mx"]
    api_version: Literal["v20250224", "v20111101"] = "v20250224"
    widget_products: list[MxProduct] = Field(default_factory=lambda: ["transactions"],
                                             min_length=1)  # v20250224 repair widgets
    base_url: str = "https://api.mx.com"
    client_id: str | None = None
    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    include_disabled_users: bool = False
    webhooks: MxWebhookConfig | None = None


SourceConfig = Annotated[FinicitySourceConfig | MxSourceConfig, Field(discriminator="provider")]
SOURCE_MODELS: dict[str, type[FinicitySourceConfig] | type[MxSourceConfig]] = {
    "finicity": FinicitySourceConfig, "mx": MxSourceConfig}
"""Each provider's config model, with its credential rules."""


class WebConfig(_Strict):
    listen_address: str = ":9877"
    telemetry_path: str = "/metrics"
    # exporter-toolkit web config (TLS, basic auth, headers): exporter/web/toolkit.py
    config_file: Path | None = None
    read_header_timeout: Duration = Field(
        10.0, gt=0, description="Longest a client may take to send its request's headers.")
    max_connections: int = Field(1000, ge=1, description="Connections open at once; the next "
                                 "one gets 503.")

    _check_durations = field_validator("read_header_timeout", mode="before")(_duration_validator)


class StateConfig(_Strict):
    """Where the tracker keeps per-account state (SQLite, WAL)."""

    path: Path = Path("openfinance-state.db")
    batch_size: int = Field(20_000, ge=1, le=100_000)


class TrackerConfig(_Strict):
    """How statuses are turned into metrics."""

    otp_streak_threshold: int = Field(3, ge=1, le=100)
    institution_min_accounts: int = Field(
        0, ge=0, description="Fold institutions with fewer accounts into institution_id=\"other\"."
    )
    max_unknown_codes: int = Field(
        50, ge=0, description="Distinct unknown codes per source shown as code labels; the rest "
        "count as code=\"other\"."
    )


class DriftConfig(_Strict):
    """When an upstream's answers count as having moved (``openfinance_upstream_drift_total``)."""

    missing_share: float = Field(
        0.02, ge=0, le=1, description="Share of a sweep's records that may lack the status "
        "field before it counts as field_missing drift.")


class Settings(BaseSettings):
    """The whole agent configuration."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    sources: list[SourceConfig] = Field(default_factory=list)
    web: WebConfig = WebConfig()
    state: StateConfig = StateConfig()
    tracker: TrackerConfig = TrackerConfig()
    health: HealthConfig = HealthConfig()
    routing: RoutingConfig = RoutingConfig()
    webhooks: WebhooksConfig | None = None
    remediation: RemediationConfig = RemediationConfig()
    drift: DriftConfig = DriftConfig()

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for src in self.sources:
            if src.name in seen:
                raise ValueError(f"source name {src.name!r} is used twice")
            seen.add(src.name)
        return self

    @model_validator(mode="after")
    def _peers_match_shards(self) -> Settings:
        peers = self.webhooks.peers if self.webhooks is not None else []
        for src in self.sources:
            if peers and src.webhooks is not None and src.shard.count not in (1, len(peers)):
                raise ValueError(f"webhooks.peers lists {len(peers)} shards but source "
                                 f"{src.name!r} has shard.count {src.shard.count}")
        return self

    @model_validator(mode="after")
    def _fix_links_served(self) -> Settings:
        r = self.remediation
        if r.enabled and r.link == "redirect" and self.webhooks is None and not r.listen_address:
            raise ValueError("remediation.link: redirect serves /fix/<token> on the webhook "
                             "listener: configure webhooks (or remediation.listen_address)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first: it overrides what the file (passed as init kwargs) says.
        return (env_settings, init_settings)


def read_yaml(path: str | Path, error: type[ConfigError] | None = None) -> Any:
    """The YAML document in ``path``; ``error`` (default :class:`ConfigError`) naming the file,
    and the line and column of a syntax error."""
    error = error or ConfigError
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error([f"{path}: cannot read ({exc.strerror})"]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error([f"{path}: not valid YAML{where}"]) from exc


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple[Any, ...], data: Mapping[str, Any]) -> str:
    """Dotted path of a pydantic error location, skipping the discriminator tags."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if item in ("finicity", "mx") and isinstance(node, dict) and node.get("provider") == item:
            continue
        if item.startswith("function-"):
            continue
        parts.append(str(item))
        node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _source_env_name(source_name: str, field: str) -> str:
    return f"{ENV_PREFIX}SOURCE_{re.sub(r'[^A-Za-z0-9]', '_', source_name).upper()}_{field.upper()}"


def _resolve_secrets(data: dict[str, Any], env: Mapping[str, str], problems: list[str]) -> None:
    """Fill ``<field>`` from ``<field>_file`` or the per-source environment variable."""
    for i, src in enumerate(data.get("sources") or []):
        if not isinstance(src, dict):
            continue
        provider, name = src.get("provider"), src.get("name")
        model = SOURCE_MODELS.get(provider) if isinstance(provider, str) else None
        if model is None or not isinstance(name, str):
            continue
        secrets = model.SECRETS
        plain = tuple(f for f in model.CREDENTIALS if f not in secrets)
        for field in secrets + plain:
            env_value = env.get(_source_env_name(name, field))
            if env_value:
                src[field] = env_value
            file_key = f"{field}_file"
            path = src.get(file_key)
            if path and not src.get(field):
                try:
                    src[field] = Path(path).read_text(encoding="utf-8").strip()
                except OSError as exc:
                    problems.append(f"sources[{i}].{file_key}: cannot read file ({exc.strerror})")
        for field in secrets:
            if not src.get(field) and not src.get(f"{field}_file"):
                problems.append(
                    f"sources[{i}].{field}: required (set it, {field}_file, "
                    f"or {_source_env_name(name, field)})"
                )
        for field in plain:
            if not src.get(field):
                problems.append(
                    f"sources[{i}].{field}: required (set it or {_source_env_name(name, field)})"
                )


def load_config(path: str | Path | None) -> Settings:
    """Read, merge with the environment and validate; raise :class:`ConfigError` listing every problem."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError([f"{path}: the top level must be a mapping"])
        data = loaded
    problems: list[str] = []
    _resolve_secrets(data, os.environ, problems)
    try:
        settings = Settings(**data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            msg = err["msg"].removeprefix("Value error, ")
            line = f"{_loc(err['loc'], data)}: {msg}"
            if line not in problems:
                problems.append(line)
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return settings
