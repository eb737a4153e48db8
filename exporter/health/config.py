"""``health:`` in the configuration file: the key mapping and the state's thresholds.

The thresholds must match the rules' ``health_*`` and ``refresh_*_after_seconds`` parameters
(alerts/params.yml) when those are changed: the page, the agent's per-institution refresh
classes and the rules then agree. The Helm chart copies them from ``prometheusRule.params``.
How often Finicity's declared statuses are re-read is per source
(``institution_status_refresh``), because it spends that source's request budget.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from exporter.durations import non_negative_duration
from exporter.health.keys import KeyMappingError, load_key_mapping
from exporter.health.sides import DEFAULT_THRESHOLDS, Thresholds

T = DEFAULT_THRESHOLDS


class HealthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    institution_keys_file: Path | None = Field(
        None, description="YAML {provider: {institution_id: key}} overriding the computed keys.")
    min_accounts: int = Field(T.min_accounts, ge=1)
    degraded_below: float = Field(T.degraded_below, gt=0, le=1)
    down_below: float = Field(T.down_below, ge=0, le=1)
    refresh_delayed_after: float = Field(
        T.refresh_delayed_after, gt=0, description="age of the last successful aggregation "
        "beyond which an account's refresh counts as delayed (the rules' "
        "refresh_delayed_after_seconds)")
    refresh_stopped_after: float = Field(
        T.refresh_stopped_after, gt=0, description="...and beyond which it counts as stopped "
        "(the rules' refresh_stopped_after_seconds)")
    refresh_lag_interval: float = Field(
        300.0, ge=0, description="seconds between reads of the refresh lag per institution "
        "from the state database (one grouped query); 0: off, the source's lag is shown")

    _durations = field_validator("refresh_lag_interval", "refresh_delayed_after",
                                 "refresh_stopped_after", mode="before")(non_negative_duration)

    @field_validator("institution_keys_file")
    @classmethod
    def _mapping_loads(cls, path: Path | None) -> Path | None:
        """Read once here so that check-config (and start-up) report a bad file clearly."""
        try:
            load_key_mapping(path)
        except KeyMappingError as exc:
            raise ValueError(str(exc)) from None
        return path

    @model_validator(mode="after")
    def _ordered(self) -> HealthConfig:
        if self.down_below > self.degraded_below:
            raise ValueError("down_below must not exceed degraded_below")
        if self.refresh_delayed_after >= self.refresh_stopped_after:
            raise ValueError("refresh_delayed_after must be shorter than refresh_stopped_after")
        return self

    def thresholds(self) -> Thresholds:
        return Thresholds(min_accounts=self.min_accounts, degraded_below=self.degraded_below,
                          down_below=self.down_below,
                          refresh_delayed_after=self.refresh_delayed_after,
                          refresh_stopped_after=self.refresh_stopped_after)
