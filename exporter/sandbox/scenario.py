"""The sandbox scenario: fleet size, how statuses evolve night by night, injected faults.

A scenario is a pydantic model (``extra="forbid"``, so a typo in a scenario file is an
error). Every field has a default equal to ``default-scenario.yml``; a scenario file only
needs the keys it changes. ``load_scenario(None)`` reads the packaged default.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

DEFAULT_SCENARIO_FILE = "default-scenario.yml"
# Weight maps are replaced whole by a scenario file, never merged key by key.
_LEAF_KEYS = frozenset({"connections_per_unit", "accounts_per_connection", "noise_codes",
                        "persistent_codes", "mfa_codes", "codes", "unknown_codes"})


def _str_keys(value: Any) -> Any:
    """YAML reads ``103: 3`` with an int key; codes are strings (``"103"``)."""
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    return value


def _str_items(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return value


CodeWeights = Annotated[dict[str, float], BeforeValidator(_str_keys)]
CodeList = Annotated[list[str], BeforeValidator(_str_items)]
InstitutionRef = Annotated[str | None, BeforeValidator(lambda v: v if v is None else str(v))]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _weights_ok(weights: Mapping[Any, float], what: str) -> None:
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"{what}: needs at least one positive weight and no negative ones")


# Finicity's institution ``status`` values (GetInstitution); what the sandbox can declare.
DeclaredStatus = Literal["online", "offline", "maintenance", "testing", "beta", "validated",
                         "migrating"]


class OutageConfig(_Strict):
    """One institution per provider goes down for a few nights (``institution`` category).

    ``declared_status`` is what Finicity's institution record says meanwhile (``status``
    and ``productionStatus``): by default ``online``, an aggregator that has not noticed.
    Outside the window the institution is declared ``online``. MX declares nothing.
    """

    enabled: bool = True
    # Institution id (Finicity, as a string) or code (MX); None: the one at ``institution_rank``.
    institution: InstitutionRef = None
    institution_rank: int = Field(1, ge=0, description="0 = the largest institution")
    start_night: int = Field(3, ge=0)
    nights: int = Field(4, ge=1)
    share: float = Field(0.85, ge=0, le=1, description="share of its connections affected")
    codes: CodeWeights = {}
    declared_status: DeclaredStatus = "online"

    @model_validator(mode="after")
    def _check(self) -> OutageConfig:
        if self.codes:
            _weights_ok(self.codes, "outage.codes")
        return self


class MaintenanceConfig(OutageConfig):
    """A second failing institution that Finicity declares in ``maintenance`` meanwhile
    (off by default in a bare model; the default scenario turns it on for Finicity)."""

    enabled: bool = False
    institution_rank: int = Field(0, ge=0, description="0 = the largest institution")
    declared_status: DeclaredStatus = "maintenance"


class OtpConfig(_Strict):
    """Connections at one institution stuck in a one-time-passcode loop.

    ``loop_share`` of that institution's connections answer MFA every night from
    ``start_night``; ``relapse_share`` answer MFA for two nights, are fixed by their user
    (one good night), then fall back into MFA for good.
    """

    enabled: bool = True
    institution: InstitutionRef = None
    institution_rank: int = Field(2, ge=0)
    start_night: int = Field(1, ge=0)
    loop_share: float = Field(0.06, ge=0, le=1)
    relapse_share: float = Field(0.03, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> OtpConfig:
        if self.loop_share + self.relapse_share > 1:
            raise ValueError("loop_share + relapse_share must be at most 1")
        return self


class ConsentConfig(_Strict):
    """OAuth consent periods at some Finicity banks (MX publishes no consent end); off
    unless enabled (the demo turns it on).

    ``share`` of the plain connections at the institutions at ``institution_ranks`` have a
    consent that ends after ``period_nights`` nights; their first end falls on one of the
    first ``period_nights`` nights, or, for ``wave_share`` of them, one of the first
    ``wave_nights`` (a re-consent wave). On its end night the login answers 947 until its
    user renews (a repair through a link, before or after the end), which starts a new
    period from that night. The API reports an end as the first night's start plus one day
    per night (``authorizationEndDate``, with ``authorizationExpires: true``), so the end
    date of a period never moves while it lasts and a renewal always reports a later one.
    """

    enabled: bool = False
    institution_ranks: list[int] = Field([3, 5], description="the OAuth banks, by size rank")
    share: float = Field(0.8, ge=0, le=1)
    period_nights: int = Field(90, ge=2, le=3650)
    wave_share: float = Field(0.25, ge=0, le=1)
    wave_nights: int = Field(7, ge=1)


class ProviderFleet(_Strict):
    """The synthetic fleet of one provider and the codes it draws from."""

    units: int = Field(..., ge=0, description="Finicity customers / MX users")
    institutions: int = Field(..., ge=2, le=500)
    hostile_names: int = Field(2, ge=0, le=5)
    connections_per_unit: dict[int, float]
    accounts_per_connection: dict[int, float] = {1: 1.0}
    noise_codes: CodeWeights
    persistent_codes: CodeWeights
    credential_code: str
    closed_code: str
    mfa_codes: CodeWeights
    unknown_codes: CodeList
    outage: OutageConfig
    maintenance: MaintenanceConfig = MaintenanceConfig()
    otp: OtpConfig
    consent: ConsentConfig = ConsentConfig()

    @model_validator(mode="after")
    def _check(self) -> ProviderFleet:
        _weights_ok(self.connections_per_unit, "connections_per_unit")
        _weights_ok(self.accounts_per_connection, "accounts_per_connection")
        _weights_ok(self.noise_codes, "noise_codes")
        _weights_ok(self.persistent_codes, "persistent_codes")
        _weights_ok(self.mfa_codes, "mfa_codes")
        if not self.unknown_codes:
            raise ValueError("unknown_codes: needs at least one code")
        if min(self.connections_per_unit) < 1 or min(self.accounts_per_connection) < 1:
            raise ValueError("connection and account counts start at 1")
        if self.hostile_names > self.institutions:
            raise ValueError("hostile_names cannot exceed institutions")
        return self


def _finicity_default() -> ProviderFleet:
    return ProviderFleet(
        units=3000,
        institutions=25,
        hostile_names=3,
        connections_per_unit={1: 50, 2: 35, 3: 15},
        accounts_per_connection={1: 60, 2: 30, 3: 10},
        noise_codes={"103": 3, "108": 2, "102": 3, "580": 1, "320": 1, "109": 1, "945": 1},
        persistent_codes={"103": 4, "108": 2, "947": 2, "948": 1, "920": 1, "936": 1},
        credential_code="103",
        closed_code="913",
        mfa_codes={"185": 1},
        unknown_codes=["1234567"],
        outage=OutageConfig(codes={"910": 3, "905": 1}),
        maintenance=MaintenanceConfig(enabled=True, codes={"910": 1}),
        otp=OtpConfig(),
    )


def _mx_default() -> ProviderFleet:
    return ProviderFleet(
        units=2000,
        institutions=15,
        hostile_names=2,
        connections_per_unit={1: 25, 2: 30, 3: 25, 4: 15, 5: 5},
        noise_codes={"DENIED": 3, "IMPEDED": 1, "FAILED": 2, "DELAYED": 1, "LOCKED": 1},
        persistent_codes={"DENIED": 3, "DISCONNECTED": 2, "PENDING": 1, "DISABLED": 1,
                          "IMPAIRED": 1},
        credential_code="DENIED",
        closed_code="CLOSED",
        mfa_codes={"CHALLENGED": 4, "EXPIRED": 1},
        unknown_codes=["HALTED"],
        outage=OutageConfig(codes={"DEGRADED": 3, "FAILED": 1}),
        otp=OtpConfig(),
    )


class RatesConfig(_Strict):
    """Shares of connections (or of connection-nights) for each behaviour.

    ``noise``: a healthy connection fails transiently on a given night (never an MFA code,
    so noise cannot fake an OTP loop). ``mfa_blip``: share of healthy connections that
    answer MFA once, on one night within the first ``mfa_blip_window`` nights, then recover.
    ``skip``: a connection is not attempted on a given night (its attempt date stays).
    """

    noise: float = Field(0.02, ge=0, le=1)
    mfa_blip: float = Field(0.02, ge=0, le=1)
    mfa_blip_window: int = Field(10, ge=1)
    skip: float = Field(0.01, ge=0, le=1)
    persistent: float = Field(0.03, ge=0, le=1)
    fixed_by_user: float = Field(0.02, ge=0, le=1)
    closed: float = Field(0.006, ge=0, le=1)
    never_aggregated: float = Field(0.004, ge=0, le=1)
    manual: float = Field(0.01, ge=0, le=1, description="MX manual members (null status)")
    unknown: float = Field(0.002, ge=0, le=1)
    # Nights within which the scripted events above begin.
    event_window: int = Field(6, ge=1)

    @model_validator(mode="after")
    def _check(self) -> RatesConfig:
        total = (self.persistent + self.fixed_by_user + self.closed + self.never_aggregated
                 + self.manual + self.unknown)
        if total > 0.5:
            raise ValueError("persistent + fixed_by_user + closed + never_aggregated + manual "
                             "+ unknown must stay at most 0.5")
        return self


class FaultsConfig(_Strict):
    """Injected transport faults on provider routes (not on /sandbox). Off by default."""

    rate_limited: float = Field(0.0, ge=0, le=1, description="share answered 429")
    retry_after_seconds: int = Field(1, ge=0)
    server_errors: float = Field(0.0, ge=0, le=1, description="share answered 500")
    unavailable: float = Field(0.0, ge=0, le=1, description="share answered 503")
    slow: float = Field(0.0, ge=0, le=1, description="share delayed by slow_seconds")
    slow_seconds: float = Field(2.0, ge=0)
    include_auth: bool = False

    @model_validator(mode="after")
    def _check(self) -> FaultsConfig:
        if self.rate_limited + self.server_errors + self.unavailable > 1:
            raise ValueError("rate_limited + server_errors + unavailable must be at most 1")
        return self

    @property
    def active(self) -> bool:
        return bool(self.rate_limited or self.server_errors or self.unavailable or self.slow)


class WebhooksConfig(_Strict):
    """Where the sandbox pushes events when state changes (each side off unless its URL is set).

    Finicity: Connect-style JSON events signed with ``X-Finicity-Signature`` (hex
    HMAC-SHA256 of the raw body keyed with ``finicity_secret``, by default the sandbox's
    partner secret). MX: CONNECTION_STATUS and member webhooks with HTTP Basic
    ``mx_username``/``mx_password`` when set. At least once: a failed delivery (transport
    error or non-2xx) is retried ``max_attempts`` times in all, ``retry_seconds`` doubling up
    to ``retry_max_seconds``; ``redeliver_once`` sends every delivered event a second time,
    byte for byte (for dedupe tests).
    """

    finicity_url: str | None = None
    finicity_secret: str | None = None
    mx_url: str | None = None
    mx_username: str | None = None
    mx_password: str | None = None
    timeout_seconds: float = Field(5.0, gt=0)
    max_attempts: int = Field(6, ge=1)
    retry_seconds: float = Field(1.0, ge=0)
    retry_max_seconds: float = Field(30.0, ge=0)
    redeliver_once: bool = False


class ConnectConfig(_Strict):
    """Connect Fix links (Finicity) and Connect widget URLs (MX) the sandbox hands out."""

    finicity_link_ttl_seconds: float = Field(7200.0, gt=0, description="clock seconds")
    mx_url_ttl_seconds: float = Field(600.0, gt=0, description="clock seconds")


class UsersConfig(_Strict):
    """The partner's end users, for fix requests sent to ``POST /sandbox/partner/fix-requests``
    (the sandbox playing the partner's receiver): ``fix_share`` of them complete the repair
    ``fix_after_nights`` nights after their request arrived (0: at once), by following its
    ``link`` when it has one, else in the partner's app. With ``request_secret`` set,
    requests must carry a valid ``X-OpenFinance-Signature``."""

    fix_share: float = Field(0.6, ge=0, le=1)
    fix_after_nights: int = Field(1, ge=0)
    fix_after_max_nights: int | None = Field(
        None, ge=0, description="spread: each user acts from fix_after_nights to this many "
        "nights after the request (decided per request id); None: exactly fix_after_nights")
    request_secret: str | None = None

    @model_validator(mode="after")
    def _spread(self) -> UsersConfig:
        if self.fix_after_max_nights is not None and self.fix_after_max_nights < self.fix_after_nights:
            raise ValueError("fix_after_max_nights must be at least fix_after_nights")
        return self


class Scenario(_Strict):
    """Everything the sandbox simulates. Defaults = ``default-scenario.yml``."""

    seed: int = 20251121
    # Real seconds per sandbox night; 0 = manual (nights advance only via POST /sandbox/advance).
    night_seconds: float = Field(0.0, ge=0)
    finicity_start_semantics: Literal["record", "page"] = "record"
    finicity_testing_customers: int = Field(5, ge=0)
    finicity_lockout_after: int = Field(5, ge=0, description="0 disables the lockout")
    token_lifetime_seconds: float = Field(7200.0, gt=0)
    otp_streak: int = Field(3, ge=1, description="distinct MFA attempts that make a suspect")
    finicity: ProviderFleet = Field(default_factory=_finicity_default)
    mx: ProviderFleet = Field(default_factory=_mx_default)
    rates: RatesConfig = RatesConfig()
    faults: FaultsConfig = FaultsConfig()
    # Institution ranks at which MX has the same bank as Finicity (same name and home-page
    # domain), so cross-aggregator joins have something to join; ranks either provider lacks,
    # and hostile-name ranks, are skipped.
    shared_institution_ranks: list[Annotated[int, Field(ge=0)]] = [0, 1, 4]
    connect: ConnectConfig = ConnectConfig()
    users: UsersConfig = UsersConfig()
    webhooks: WebhooksConfig | None = None

    def with_realism(self, level: float) -> Scenario:
        """A copy with transport faults scaled by ``level`` (0 = none, 1 = a rough day)."""
        level = max(0.0, min(float(level), 5.0))
        faults = self.faults.model_copy(update={
            "rate_limited": 0.02 * level, "server_errors": 0.005 * level,
            "unavailable": 0.005 * level, "slow": 0.01 * level, "slow_seconds": 1.5,
        })
        return self.model_copy(update={"faults": faults})


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if (key not in _LEAF_KEYS and isinstance(value, Mapping)
                and isinstance(out.get(key), Mapping)):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def default_scenario_text() -> str:
    return resources.files("exporter.sandbox").joinpath(DEFAULT_SCENARIO_FILE).read_text("utf-8")


def load_scenario(path: str | Path | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Scenario:
    """The packaged default scenario, or the file at ``path`` (keys it omits keep their defaults).

    ``overrides`` is merged in last, key by key (``{"night_seconds": 20}``,
    ``{"finicity": {"units": 100000}}``). Raises ``pydantic.ValidationError`` or
    ``ValueError`` (not a mapping / unreadable YAML).
    """
    if path is None:
        text = default_scenario_text()
        where = DEFAULT_SCENARIO_FILE
    else:
        text = Path(path).read_text("utf-8")
        where = str(path)
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where}: a scenario must be a mapping")
    if path is not None:
        # A user's file overrides the packaged default, key by key.
        data = _deep_merge(yaml.safe_load(default_scenario_text()) or {}, data)
    if overrides:
        data = _deep_merge(data, overrides)
    return Scenario.model_validate(data)
