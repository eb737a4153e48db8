"""Routing advice for one institution: the share of new links each aggregator should get.

Pure functions, time passed in: :func:`observe` turns what the fleet shows at one aggregator
into an observed state, :func:`step` applies the hysteresis to one (institution,
aggregator) track, :func:`split` turns the tracks into integer shares summing to 100, and
:func:`advise` does all three for one institution. :class:`~exporter.routing.advisor.Advisor`
keeps the tracks between calls.

The rule: healthy aggregators share new links by the partner's default weights; degraded ones
get links only when no aggregator is healthy; a down one (observed, or declared offline or in
maintenance) gets none unless all are down (then the defaults: there is no better choice). A
worse state moves the advice after it held for ``hold``, a better one after ``recover_hold``.
An aggregator with too few accounts for a state (``unknown``) does not move the advice; one
never seen with a state is presumed healthy (the defaults), and the first state it shows
applies at once (nothing to hold against; after a restart the state database already holds
the fleet, so the advice is re-derived from it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from exporter.health.report import rfc3339
from exporter.health.sides import Thresholds

HEALTHY, DEGRADED, DOWN, UNKNOWN = "healthy", "degraded", "down", "unknown"
RANK = {DOWN: 0, DEGRADED: 1, HEALTHY: 2}
DECLARED_DOWN = ("offline", "maintenance")
"""Declared statuses that count as down whatever the fleet shows."""


@dataclass(frozen=True, slots=True)
class Observed:
    """What the fleet shows now at one aggregator for one institution."""

    state: str
    """healthy | degraded | down | unknown (too few accounts, nothing declared)"""
    declared: str | None = None
    """offline | maintenance when the aggregator declares it so (that makes it down)"""


def observe(ok: int, attempted: int, declared: Iterable[str | None],
            thresholds: Thresholds) -> Observed:
    """The observed state from the accounts on the health sides (``ok`` of ``attempted``)
    and the statuses the aggregator declares (institution, overall, per product)."""
    down = next((d for d in declared if d in DECLARED_DOWN), None)
    if down is not None:
        return Observed(DOWN, down)
    state = thresholds.state(ok, attempted)
    return Observed(state if state in RANK else UNKNOWN)


@dataclass(frozen=True, slots=True)
class Track:
    """One (institution, aggregator): the state the advice uses and a change waiting."""

    state: str = UNKNOWN
    """healthy | degraded | down, or unknown while never seen with a state"""
    since: float | None = None
    """when ``state`` took effect"""
    seen_since: float | None = None
    """when ``state`` was first seen (``since`` minus the hold it waited)"""
    declared: str | None = None
    pending: str | None = None
    """an observed state that differs from ``state`` and has not held long enough yet"""
    pending_since: float | None = None
    pending_declared: str | None = None

    def due(self, hold: float, recover_hold: float) -> float | None:
        """When the pending state takes over if it holds."""
        if self.pending is None or self.pending_since is None:
            return None
        better = RANK[self.pending] > RANK.get(self.state, RANK[HEALTHY])
        return self.pending_since + (recover_hold if better else hold)


def step(track: Track, observed: Observed, now: float, hold: float,
         recover_hold: float) -> Track:
    """The track after one observation at ``now``.

    ``unknown`` changes nothing. The first known state applies at once. A state equal to the
    current one drops any pending change. Otherwise the new state is pending; a pending
    change that keeps its direction (worse, or better, than the current state) keeps its
    start, so ``down`` after ``degraded`` still moves away ``hold`` after the first of them.
    """
    obs = observed.state
    if obs == UNKNOWN:
        return track
    if track.state == UNKNOWN:
        return Track(obs, now, now, observed.declared)
    if obs == track.state:
        if track.pending is None and track.declared == observed.declared:
            return track
        return replace(track, declared=observed.declared, pending=None, pending_since=None,
                       pending_declared=None)
    worse = RANK[obs] < RANK[track.state]
    started = now
    if track.pending is not None and track.pending_since is not None and (
            (RANK[track.pending] < RANK[track.state]) == worse):
        started = track.pending_since
    track = replace(track, pending=obs, pending_since=started,
                    pending_declared=observed.declared)
    due = track.due(hold, recover_hold)
    if due is not None and now >= due:
        return Track(obs, now, started, observed.declared)
    return track


def split(weights: Mapping[str, int], among: Iterable[str]) -> dict[str, int]:
    """Integer shares summing to 100 for ``among`` by their weights (largest remainder, ties
    by name); every other provider of ``weights`` gets 0. Zero weights all round: equal."""
    chosen = sorted(set(among))
    if not chosen:
        return dict.fromkeys(sorted(weights), 0)
    w = {p: weights.get(p, 0) for p in chosen}
    if not any(w.values()):
        w = dict.fromkeys(chosen, 1)
    total = sum(w.values())
    exact = {p: 100 * v / total for p, v in w.items()}
    out = {p: int(exact[p]) for p in chosen}
    for p in sorted(chosen, key=lambda p: (-(exact[p] - out[p]), p))[:100 - sum(out.values())]:
        out[p] += 1
    return {p: out.get(p, 0) for p in sorted(weights)}


@dataclass(frozen=True, slots=True)
class Advice:
    shares: dict[str, int]
    rule: str
    """default | away | degraded_only | all_down"""
    tracks: dict[str, Track]


def shares_for(tracks: Mapping[str, Track], weights: Mapping[str, int]) -> tuple[dict[str, int],
                                                                                  str]:
    """The shares from the tracks' states, and which rule gave them."""
    state = {p: tracks[p].state if p in tracks else UNKNOWN for p in weights}
    healthy = [p for p, s in state.items() if s in (HEALTHY, UNKNOWN)]
    if len(healthy) == len(state):
        return split(weights, healthy), "default"
    if healthy:
        return split(weights, healthy), "away"
    degraded = [p for p, s in state.items() if s == DEGRADED]
    if degraded:
        return split(weights, degraded), "degraded_only"
    return split(weights, weights), "all_down"


def advise(tracks: Mapping[str, Track], observed: Mapping[str, Observed], now: float,
           weights: Mapping[str, int], hold: float, recover_hold: float) -> Advice:
    """One institution's advice: every provider of ``weights`` steps with its observation
    (missing: unknown), then the shares follow the states."""
    new = {p: step(tracks.get(p, Track()), observed.get(p, Observed(UNKNOWN)), now, hold,
                   recover_hold) for p in weights}
    shares, rule = shares_for(new, weights)
    return Advice(shares, rule, new)


_RULES = {
    "default": "default weights",
    "away": "routed away from {bad}",
    "degraded_only": "no aggregator healthy: degraded ones share",
    "all_down": "down at every aggregator: default weights (no better choice)",
}


def reason(advice: Advice, hold: float, recover_hold: float) -> str:
    """The advice in words: the rule, then each aggregator's state and any pending change."""
    parts = []
    bad = []
    for provider, t in sorted(advice.tracks.items()):
        if t.state == UNKNOWN:
            parts.append(f"{provider}: no state yet (presumed healthy)")
        else:
            declared = f" (declared {t.declared})" if t.declared else ""
            parts.append(f"{provider}: {t.state}{declared} since {rfc3339(t.since or 0)}")
            if t.state != HEALTHY:
                bad.append(provider)
        due = t.due(hold, recover_hold)
        if t.pending is not None and due is not None:
            declared = f" (declared {t.pending_declared})" if t.pending_declared else ""
            parts.append(f"{provider} seen {t.pending}{declared} since "
                         f"{rfc3339(t.pending_since or 0)}, counts from {rfc3339(due)} if it "
                         f"holds")
    rule = _RULES[advice.rule].format(bad=" and ".join(bad) or "none")
    return f"{rule}; " + "; ".join(parts)
