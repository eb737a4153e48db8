"""``routing:`` in the configuration file: the partner's default split and the holds.

``default_weights`` split new links between healthy aggregators (default: equal);
``hold`` is how long a worse state must last before the advice moves away from an
aggregator, ``recover_hold`` how long a better one must last before it moves back;
``institution_ids_file`` maps our institution keys (or an aggregator's institution ids) to
the partner's own institution ids for the UCP export.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from exporter.durations import non_negative_duration

PROVIDERS = ("finicity", "mx")


class InstitutionIdsError(ValueError):
    """The institution ids file cannot be used; the message says why."""


class _IdsFile(BaseModel):
    """``keys: {key: id}``, ``finicity: {institution_id: id}``, ``mx: {institution_code: id}``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    keys: dict[str, str] = {}
    finicity: dict[str, str] = {}
    mx: dict[str, str] = {}


@dataclass(frozen=True, slots=True)
class InstitutionIds:
    """The partner's institution ids: by our key first, else by an aggregator's id."""

    by_key: Mapping[str, str]
    by_provider: Mapping[tuple[str, str], str]

    def partner_id(self, key: str, refs: Iterable[tuple[str, str]]) -> str | None:
        """The partner's id of the institution ``key`` whose aggregator ids are ``refs``
        ((provider, institution_id), in a stable order); None when the file names none."""
        found = self.by_key.get(key)
        if found is not None:
            return found
        return next((self.by_provider[r] for r in refs if r in self.by_provider), None)


def _id(value: object) -> object:
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def load_institution_ids(path: Path | str | None) -> InstitutionIds | None:
    """Read the institution ids file; None without a path."""
    if path is None:
        return None
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise InstitutionIdsError(f"{path}: {exc}") from exc
    if data is None:
        data = {}
    if isinstance(data, dict):  # YAML reads unquoted numeric ids as ints; ids are strings
        data = {k: ({str(i): _id(v) for i, v in e.items()} if isinstance(e, dict) else e)
                for k, e in data.items()}
    try:
        parsed = _IdsFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                             for e in exc.errors(include_url=False))
        raise InstitutionIdsError(f"{path}: {problems}") from None
    return InstitutionIds(dict(parsed.keys), {
        **{("finicity", i): v for i, v in parsed.finicity.items()},
        **{("mx", i): v for i, v in parsed.mx.items()}})


class RoutingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default_weights: dict[str, int] | None = Field(
        None, description="share of new links per provider among healthy aggregators, e.g. "
        "{finicity: 70, mx: 30}; a configured provider left out gets none; default: equal")
    hold: float = Field(1800.0, description="a worse state moves the advice after this long")
    recover_hold: float = Field(
        7200.0, description="a better state (a recovered aggregator) moves it back after this long")
    institution_ids_file: Path | None = Field(
        None, description="YAML {keys: {key: id}, finicity: {institution_id: id}, "
        "mx: {institution_code: id}}: the partner's institution ids for ?format=ucp")

    _durations = field_validator("hold", "recover_hold", mode="before")(non_negative_duration)

    @field_validator("default_weights")
    @classmethod
    def _weights(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is None:
            return None
        unknown = sorted(set(value) - set(PROVIDERS))
        if unknown:
            raise ValueError(f"unknown provider {', '.join(unknown)} (one of "
                             f"{', '.join(PROVIDERS)})")
        if any(w < 0 for w in value.values()) or not any(value.values()):
            raise ValueError("weights must not be negative and at least one must be positive")
        return value

    @field_validator("institution_ids_file")
    @classmethod
    def _ids_load(cls, path: Path | None) -> Path | None:
        """Read once here so that check-config (and start-up) report a bad file clearly."""
        try:
            load_institution_ids(path)
        except InstitutionIdsError as exc:
            raise ValueError(str(exc)) from None
        return path

    def weights(self, providers: Iterable[str]) -> dict[str, int]:
        """The weight of each of ``providers``: equal by default; when the configured
        weights give none of them a positive weight, equal too."""
        providers = sorted(set(providers))
        if self.default_weights is None:
            return dict.fromkeys(providers, 1)
        out = {p: self.default_weights.get(p, 0) for p in providers}
        return out if any(out.values()) else dict.fromkeys(providers, 1)
