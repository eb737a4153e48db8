"""The part of /metrics that depends only on the snapshot, kept per institution block.

Everything :class:`~exporter.metrics.collectors.FleetCollector` and
:class:`~exporter.metrics.collectors.InstitutionHealthCollector` yield (fleet series, declared
statuses, institution keys, refresh lag) changes only when a snapshot is published or
institution health changes (a declared status re-read, a refresh-lag read). :class:`SnapshotText`
keeps those families as :class:`~exporter.metrics.blocks.BlockList` per source, one block per
institution, and on each new snapshot re-renders only the blocks whose rows changed:

- fleet families: a source whose aggregate is the same object is skipped; otherwise a family
  whose rows tuple is equal is skipped, and the others are diffed as sets of rows (in C), the
  institutions of the rows that differ being re-read from the sorted tuple by bisection;
- institution health: when its version changes, every institution's rows are read again and
  compared; otherwise only institutions that appeared get theirs.

The text is byte-identical to ``prometheus_client`` rendering the two collectors (a property
test holds the two together). The tracker's rows are sorted by institution, which both rely on.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable

from exporter.health.wiring import HealthWiring
from exporter.metrics.blocks import BlockList
from exporter.metrics.lines import FamilyFormat
from exporter.routing.advisor import Advisor
from exporter.status_codes import Catalog
from exporter.tracker import Snapshot, SourceAggregate

FLEET = ("accounts", "fixable_accounts", "otp_suspected_accounts", "status_transitions")
"""the per-institution fleet families, in FleetCollector's order"""
HEALTH = ("institution_declared_status", "institution_key_info",
          "institution_refresh_accounts")
FAMILIES = (*HEALTH, *FLEET, "status_code_info", "state_accounts", "routing_share")
"""every family of the snapshot part, in the order the collectors yield them (registered in
this order by :func:`exporter.metrics.build_metrics`)"""
SHARED = ("status_code_info", "routing_share")
"""families kept once, not per source"""

Key = tuple[str, str]
Rows = tuple[tuple, ...]


def _fleet_rows(agg: SourceAggregate) -> tuple[Rows, ...]:
    return agg.accounts, agg.fixable, agg.otp_suspected, agg.transitions


class _Source:
    """One source's blocks and what they were rendered from."""

    def __init__(self, formats: dict[str, FamilyFormat]):
        self.agg: SourceAggregate | None = None
        self.blocks = {short: BlockList(formats[short]) for short in FAMILIES
                       if short not in SHARED}
        self.rows: list[Rows] = [() for _ in FLEET]
        self.sets: list[set] = [set() for _ in FLEET]
        self.facts_version: Hashable = None
        self.lag_version: Hashable = None

    def fleet(self, agg: SourceAggregate) -> tuple[set[Key], set[Key]]:
        """Move the fleet blocks to ``agg``; the institutions (accounts keys) that appeared
        and went."""
        appeared: set[Key] = set()
        gone: set[Key] = set()
        prefix = (agg.source, agg.provider)
        for i, (short, rows) in enumerate(zip(FLEET, _fleet_rows(agg), strict=True)):
            old = self.rows[i]
            if rows is old or rows == old:
                continue
            new_set = set(rows)
            changed = {(r[0], r[1]) for r in new_set.symmetric_difference(self.sets[i])}
            self.rows[i], self.sets[i] = rows, new_set
            blocks = self.blocks[short]
            for key in changed:
                lo = bisect_left(rows, key)
                hi = bisect_left(rows, (key[0], key[1] + "\x00"), lo)
                came = blocks.put(key, tuple((*prefix, *row) for row in rows[lo:hi]))
                if came and short == "accounts":
                    (appeared if came > 0 else gone).add(key)
        self.blocks["state_accounts"].put((agg.source,), ((agg.source, agg.state_accounts),))
        self.agg = agg
        return appeared, gone

    def health(self, agg: SourceAggregate, health: HealthWiring, appeared: set[Key],
               gone: set[Key]) -> None:
        """Move the institution-health blocks to the health rows and the shown institutions."""
        facts, lag = health.rows_version()
        shown = self.blocks["accounts"].keys
        declared, keys, refresh = (self.blocks[short] for short in HEALTH)
        if facts != self.facts_version:
            self.facts_version = facts
            todo: Iterable[Key] = shown
            declared.drop_except(set(shown))
            keys.drop_except(set(shown))
        else:
            todo = appeared
            for key in gone:
                declared.put(key, ())
                keys.put(key, ())
        for key in todo:
            declared_rows, key_rows = health.institution_rows(agg.source, agg.provider, *key)
            declared.put(key, tuple((*row, 1) for row in declared_rows))
            keys.put(key, tuple((*row, 1) for row in key_rows))
        if lag != self.lag_version or appeared or gone:
            self.lag_version = lag
            rows = health.refresh_rows(agg.source, agg.provider, shown)
            refresh.drop_except(rows)
            for key, block in rows.items():
                refresh.put(key, block)


    def no_health(self) -> None:
        """No institution health (yet): its families are empty."""
        for short in HEALTH:
            self.blocks[short].drop_except(())
        self.facts_version = self.lag_version = None


class SnapshotText:
    """The snapshot part of /metrics, per format, as a list of texts (headers and segments)."""

    def __init__(self, snapshot: Callable[[], Snapshot], catalog: Catalog,
                 institutions: Callable[[], HealthWiring | None] = lambda: None,
                 routing: Callable[[], Advisor | None] = lambda: None):
        self._snapshot = snapshot
        self._institutions = institutions
        self._routing = routing
        self._routing_version: Hashable = None
        self.formats = {short: FamilyFormat(short) for short in FAMILIES}
        self._info = BlockList(self.formats["status_code_info"])
        self._info.put(("",), tuple(
            (e.provider, e.code, e.name, e.category, str(e.fixable).lower(), 1)
            for e in catalog))
        self._shares = BlockList(self.formats["routing_share"])
        self._sources: dict[str, _Source] = {}
        self._order: list[str] = []
        self._version: Hashable = object()

    def update(self) -> Hashable:
        """Bring the blocks to the current snapshot and institution health; returns a value
        that changes whenever the text may have changed."""
        snap = self._snapshot()
        health = self._institutions()
        routing = self._routing()
        version = (snap.version, health.rows_version() if health is not None else None,
                   routing.version if routing is not None else None)
        if version == self._version:
            return version
        if version[2] != self._routing_version:
            self._routing_version = version[2]
            by_key = routing.rows_by_key() if routing is not None else {}
            self._shares.drop_except({(key,) for key in by_key})
            for key, rows in by_key.items():
                self._shares.put((key,), rows)
        for name in [n for n in self._sources if n not in snap.sources]:
            del self._sources[name]
        for name, agg in snap.sources.items():
            src = self._sources.get(name)
            if src is None:
                src = self._sources[name] = _Source(self.formats)
            appeared: set[Key] = set()
            gone: set[Key] = set()
            if agg is not src.agg:
                appeared, gone = src.fleet(agg)
            if health is not None:
                src.health(agg, health, appeared, gone)
            else:
                src.no_health()
        self._version = version
        self._order = list(snap.sources)
        return version

    def pieces(self, openmetrics: bool) -> list[bytes]:
        """The text as of the last :meth:`update`: each family's header, then its segments
        source by source."""
        out: list[bytes] = []
        for short in FAMILIES:
            out.append(self.formats[short].header[openmetrics])
            if short in SHARED:
                out.extend((self._info if short == "status_code_info" else
                            self._shares).segments())
                continue
            for name in self._order:
                out.extend(self._sources[name].blocks[short].segments())
        return out
