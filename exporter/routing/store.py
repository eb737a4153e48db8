"""The routing advice in the state database (table ``routing_advice``), so a restart keeps
each institution's tracks, pending changes and holds instead of re-deriving them.

One row per institution key: its shares, since when, and each aggregator's track (JSON).
Written after each scheduled evaluation for the keys whose advice changed, off the event
loop; read once at start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from exporter.routing.advice import Track
from exporter.state.routing import RoutingTables

_TRACK_FIELDS = frozenset(f.name for f in fields(Track))


@dataclass(frozen=True, slots=True)
class Kept:
    """What the advisor keeps of one institution between evaluations."""

    tracks: dict[str, Track]
    shares: dict[str, int]
    since: float

    def to_json(self) -> str:
        return json.dumps({"shares": self.shares, "since": self.since,
                           "tracks": {p: asdict(t) for p, t in self.tracks.items()}},
                          separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Kept:
        """Raises ``ValueError`` (or ``TypeError``/``KeyError``) for a body it cannot use."""
        body: Any = json.loads(text)
        tracks = {str(p): Track(**{k: v for k, v in t.items() if k in _TRACK_FIELDS})
                  for p, t in body["tracks"].items()}
        return cls(tracks, {str(p): int(v) for p, v in body["shares"].items()},
                   float(body["since"]))


class RoutingStore(RoutingTables):
    """Advice in and out of the ``routing_advice`` table
    (:class:`~exporter.state.routing.RoutingTables`); blocking methods, run on the state
    database's writer thread."""

    def load(self) -> tuple[dict[str, Kept], int]:
        """Every stored institution, and how many rows could not be used (skipped)."""
        out: dict[str, Kept] = {}
        bad = 0
        for key, body in self.rows():
            try:
                out[key] = Kept.from_json(body)
            except (ValueError, TypeError, KeyError, AttributeError):
                bad += 1
        return out, bad

    def save(self, upserts: Mapping[str, Kept], deletes: Iterable[str]) -> None:
        self.write_rows([(k, kept.to_json()) for k, kept in upserts.items()], deletes)
