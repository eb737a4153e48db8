"""The health of every institution, per aggregator and side by side, from one tracker snapshot.

Per (source, institution): accounts per side (:mod:`.sides`), the Plaid-style breakdown
(shares of ok, institution-side and aggregator-side accounts among those three; user-side
accounts excluded and shown apart), the recorded state, the declared status and the refresh
lag. The snapshot has last-success ages per source; per institution, the refresh lag comes
from :class:`~exporter.health.lag.InstitutionAges` (``scope: "institution"``, with the counts
behind it) once it has read the state database, and until then it is the source's
(``scope: "source"``, with the source's median age).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from exporter.health.directory import InstitutionDirectory
from exporter.health.lag import REFRESH_CLASSES, AgeCounts
from exporter.health.sides import (
    DEFAULT_THRESHOLDS,
    HEALTH_SIDES,
    NO_STATE,
    SIDES,
    Thresholds,
    side_of,
)
from exporter.sources.institution import DeclaredStatus
from exporter.tracker import AgeHistogram, Snapshot, SourceAggregate

FOLDED = "other"
"""The tracker's institution_id (and name) for institutions folded below the size cap."""
STATE_ORDER = {"down": 0, "degraded": 1, "healthy": 2, NO_STATE: 3}


@dataclass(frozen=True, slots=True)
class RefreshLag:
    """How stale a source's data is: Plaid's refresh interval, from last-success ages."""

    state: str
    """``normal`` | ``delayed`` | ``stopped`` | ``unknown`` (no accounts)"""
    median_age_seconds: float | None
    """median age of the last successful aggregation (None: more than half never succeeded,
    or ``scope`` is ``institution``)"""
    scope: str = "source"
    counts: AgeCounts | None = None
    """per institution: accounts by age class of their last success"""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "median_age_seconds": self.median_age_seconds,
                               "scope": self.scope}
        if self.counts is not None:
            out["accounts"] = self.counts.as_dict()
        return out


def institution_lag(counts: AgeCounts) -> RefreshLag:
    return RefreshLag(counts.state(), None, "institution", counts)


_NO_AGES = AgeCounts()

AgesBySource = Callable[[str], Mapping[str, AgeCounts]]
"""source → institution_id → age counts (empty until first read)"""


def _no_ages(source: str) -> Mapping[str, AgeCounts]:
    return {}


def institution_age_counts(agg: SourceAggregate, ages: Mapping[str, AgeCounts]
                           ) -> dict[tuple[str, str], AgeCounts]:
    """(institution_id, name) as the snapshot labels them → age counts; the institutions the
    snapshot folds are summed under its folded entry."""
    return age_counts({(a[0], a[1]) for a in agg.accounts}, ages)


def age_counts(shown: Iterable[tuple[str, str]], ages: Mapping[str, AgeCounts]
               ) -> dict[tuple[str, str], AgeCounts]:
    """:func:`institution_age_counts` for the distinct (institution_id, name) pairs a
    snapshot shows."""
    shown = sorted(shown)
    out = {(i, n): ages.get(i, _NO_AGES) for i, n in shown if i != FOLDED}
    folded = [(i, n) for i, n in shown if i == FOLDED]
    if folded:
        ids = {i for i, _ in out}
        rest = AgeCounts()
        for inst_id, counts in ages.items():
            if inst_id not in ids:
                rest = rest + counts
        out[folded[0]] = rest
    return out


def refresh_lag(ages: AgeHistogram, never_succeeded: int, now: float,
                thresholds: Thresholds = DEFAULT_THRESHOLDS) -> RefreshLag:
    """The same test as the recording rule: the median age is at most a bound exactly when at
    least half the accounts (never-succeeded ones included) succeeded within it."""
    total = ages.total + never_succeeded
    if total <= 0:
        return RefreshLag("unknown", None)
    half = total / 2
    if ages.since(now - thresholds.refresh_delayed_after) >= half:
        state = "normal"
    elif ages.since(now - thresholds.refresh_stopped_after) >= half:
        state = "delayed"
    else:
        state = "stopped"
    rank = math.ceil(half)  # the rank-th youngest account
    median = None
    if rank <= ages.total:  # the (total - rank + 1)-th oldest success
        i = bisect_left(ages.cumulative, ages.total - rank + 1)
        median = max(0.0, now - ages.minutes[i])
    return RefreshLag(state, median)


@dataclass(frozen=True, slots=True)
class ProviderHealth:
    source: str
    provider: str
    institution_id: str
    institution: str
    key: str
    counts: dict[str, int]
    """accounts per side (every side present, 0 when none)"""
    state: str
    declared: DeclaredStatus | None
    refresh: RefreshLag

    @property
    def accounts(self) -> int:
        return sum(self.counts.values())

    @property
    def attempted(self) -> int:
        return sum(self.counts[s] for s in HEALTH_SIDES)

    @property
    def breakdown(self) -> dict[str, float] | None:
        """Shares of ok, institution and aggregator among those three (None when all are 0)."""
        n = self.attempted
        return {s: self.counts[s] / n for s in HEALTH_SIDES} if n else None

    @property
    def user_share(self) -> float | None:
        """User-side accounts among all accounts (not part of the health share)."""
        return self.counts["user"] / self.accounts if self.accounts else None

    def as_json(self) -> dict[str, Any]:
        declared = self.declared
        return {
            "source": self.source,
            "provider": self.provider,
            "institution_id": self.institution_id,
            "institution": self.institution,
            "accounts": self.accounts,
            "counts": dict(self.counts),
            "breakdown": self.breakdown,
            "user_error_share": self.user_share,
            "state": self.state,
            "declared": None if declared is None else {
                "status": declared.status, "products": declared.as_dict()},
            "refresh": self.refresh.as_json(),
        }


@dataclass(frozen=True, slots=True)
class InstitutionHealth:
    key: str
    name: str
    providers: tuple[ProviderHealth, ...]

    @property
    def worst_state(self) -> str:
        return min((p.state for p in self.providers), key=STATE_ORDER.__getitem__)

    @property
    def accounts(self) -> int:
        return sum(p.accounts for p in self.providers)

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "name": self.name, "state": self.worst_state,
                "accounts": self.accounts, "providers": [p.as_json() for p in self.providers]}


def provider_counts(inst: InstitutionHealth) -> dict[str, dict[str, int]]:
    """provider → accounts per health side at this institution, its sources summed (routing
    advice and the history judge an aggregator, not a source)."""
    out: dict[str, dict[str, int]] = {}
    for p in inst.providers:
        sides = out.setdefault(p.provider, dict.fromkeys(HEALTH_SIDES, 0))
        for side in HEALTH_SIDES:
            sides[side] += p.counts[side]
    return out


@dataclass(frozen=True, slots=True)
class HealthReport:
    generated_at: float
    snapshot_version: int
    thresholds: Thresholds
    institutions: tuple[InstitutionHealth, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        t = self.thresholds
        return {
            "generated_at": rfc3339(self.generated_at),
            "snapshot_version": self.snapshot_version,
            "thresholds": {
                "min_accounts": t.min_accounts, "degraded_below": t.degraded_below,
                "down_below": t.down_below,
                "refresh_delayed_after_seconds": t.refresh_delayed_after,
                "refresh_stopped_after_seconds": t.refresh_stopped_after,
            },
            "sides": {side: list(cats) for side, cats in SIDES.items()},
            "institutions": [i.as_json() for i in self.institutions],
        }


def rfc3339(ts: float) -> str:
    """Epoch seconds as RFC 3339 UTC to the second: ``2026-12-06T15:04:05Z``."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def build_report(snapshot: Snapshot, directory: InstitutionDirectory, now: float,
                 thresholds: Thresholds = DEFAULT_THRESHOLDS,
                 ages: AgesBySource = _no_ages) -> HealthReport:
    """Group the snapshot's account counts by institution key; worst state first."""
    by_key: dict[str, list[ProviderHealth]] = defaultdict(list)
    for agg in snapshot.sources.values():
        counts: dict[tuple[str, str], dict[str, int]] = {}
        for inst_id, name, _code, category, n in agg.accounts:
            per_side = counts.setdefault((inst_id, name), dict.fromkeys(SIDES, 0))
            per_side[side_of(category)] += n
        source_lag = refresh_lag(agg.success, agg.never_succeeded, now, thresholds)
        read = ages(agg.source)
        lags = ({k: institution_lag(c) for k, c in institution_age_counts(agg, read).items()}
                if read else {})
        for (inst_id, name), per_side in counts.items():
            folded = inst_id == FOLDED
            key = FOLDED if folded else directory.key(agg.provider, inst_id, name)
            entry = ProviderHealth(
                source=agg.source, provider=agg.provider, institution_id=inst_id,
                institution=name, key=key, counts=per_side,
                state=thresholds.state(per_side["ok"], sum(per_side[s] for s in HEALTH_SIDES)),
                declared=None if folded else directory.declared(agg.source, inst_id),
                refresh=lags.get((inst_id, name), source_lag))
            by_key[key].append(entry)
    institutions = [
        InstitutionHealth(key, _display_name(entries),
                          tuple(sorted(entries, key=lambda p: (p.provider, p.source))))
        for key, entries in by_key.items()]
    institutions.sort(key=lambda i: (STATE_ORDER[i.worst_state], -i.accounts, i.key))
    return HealthReport(now, snapshot.version, thresholds, tuple(institutions))


def _display_name(entries: list[ProviderHealth]) -> str:
    """The name of the provider entry with the most accounts (ties: alphabetical)."""
    if entries[0].key == FOLDED:
        return "Other institutions (folded)"
    return min(entries, key=lambda p: (-p.accounts, p.institution)).institution


def declared_rows(source: str, provider: str, institution_id: str, name: str,
                  declared: DeclaredStatus | None) -> tuple[tuple[str, ...], ...]:
    """One institution's rows of ``openfinance_institution_declared_status``."""
    if declared is None:
        return ()
    return tuple((source, provider, institution_id, name, product, status)
                 for product, status in declared.statuses)


def declared_series(snapshot: Snapshot, directory: InstitutionDirectory):
    """``(source, provider, institution_id, institution, product, status)`` for every
    institution the snapshot shows unfolded: the rows of
    ``openfinance_institution_declared_status``."""
    for agg in snapshot.sources.values():
        for inst_id, name in sorted({(a[0], a[1]) for a in agg.accounts}):
            if inst_id != FOLDED:
                yield from declared_rows(agg.source, agg.provider, inst_id, name,
                                         directory.declared(agg.source, inst_id))


def key_series(snapshot: Snapshot, directory: InstitutionDirectory):
    """``(source, provider, institution_id, key)``: the rows of
    ``openfinance_institution_key_info``."""
    for agg in snapshot.sources.values():
        for inst_id, name in sorted({(a[0], a[1]) for a in agg.accounts}):
            if inst_id != FOLDED:
                yield agg.source, agg.provider, inst_id, directory.key(agg.provider, inst_id, name)


def refresh_rows(source: str, provider: str, counts: Mapping[tuple[str, str], AgeCounts],
                 ) -> dict[tuple[str, str], tuple[tuple, ...]]:
    """(institution_id, name) → its rows of ``openfinance_institution_refresh_accounts``."""
    return {(inst_id, name): institution_refresh_rows(source, provider, inst_id, name, c)
            for (inst_id, name), c in counts.items()}


def institution_refresh_rows(source: str, provider: str, institution_id: str, name: str,
                             counts: AgeCounts) -> tuple[tuple, ...]:
    """One institution's rows of ``openfinance_institution_refresh_accounts``."""
    return tuple((source, provider, institution_id, name, cls, getattr(counts, cls))
                 for cls in REFRESH_CLASSES)


def refresh_series(snapshot: Snapshot, ages: AgesBySource):
    """``(source, provider, institution_id, institution, refresh, accounts)``: the rows of
    ``openfinance_institution_refresh_accounts`` (none before the first read)."""
    for agg in snapshot.sources.values():
        read = ages(agg.source)
        if not read:
            continue
        per_institution = refresh_rows(agg.source, agg.provider,
                                       institution_age_counts(agg, read))
        for _key, rows in sorted(per_institution.items()):
            yield from rows
