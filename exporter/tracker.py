"""The tracker: records in, per-account state and an immutable snapshot of aggregates out.

For each record it resolves the code through the catalog, compares with the stored state
to count category transitions and MFA streaks per *distinct aggregation attempt*, and
writes the new state back in batches. When a sweep finishes it rebuilds that source's
aggregates from the state database and swaps in a new :class:`Snapshot`; the collector
only ever reads the current snapshot.

A failed sweep changes nothing; a partial one updates only the accounts it read (the rest
keep their last state); only a complete sweep drops accounts it did not see.
"""

from __future__ import annotations

import asyncio
import logging
import math
from array import array
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from exporter.catalog import Catalog, normalise_code
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state import AccountRow, SourceRows, StateStore, read_source

log = logging.getLogger(__name__)

OTHER = "other"
# Timestamps before 2000-01-01 or more than two days ahead are treated as absent.
_MIN_TS = 946_684_800.0
_MAX_AHEAD = 2 * 86400.0
_MAX_LABEL = 200


class TrackerEvents(Protocol):
    """Where the tracker reports bad input (implemented by the agent's self-metrics)."""

    def invalid_record(self, source: str, reason: str) -> None: ...

    def unknown_code(self, source: str, provider: str) -> None: ...


class _NoEvents:
    def invalid_record(self, source: str, reason: str) -> None:
        pass

    def unknown_code(self, source: str, provider: str) -> None:
        pass


def clean_label(value: object, fallback: str) -> str:
    """A label-safe display string: control characters become spaces, length is bounded.

    Quotes, backslashes and any unicode are kept (the exposition escapes them); lone
    surrogates, which cannot be encoded, are replaced.
    """
    if not isinstance(value, str) or not value.strip():
        return fallback
    if value.isprintable() and len(value) <= _MAX_LABEL and value == value.strip():
        return value
    text = "".join(" " if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in value).strip()
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:_MAX_LABEL] or fallback


@dataclass(frozen=True, slots=True)
class SourceAggregate:
    """Everything the collector shows for one source, computed once per sweep."""

    source: str
    provider: str
    accounts: tuple[tuple[str, str, str, str, int], ...] = ()
    """(institution_id, institution, code, category, count)"""
    fixable: tuple[tuple[str, str, str, int], ...] = ()
    """(institution_id, institution, code, count)"""
    otp_suspected: tuple[tuple[str, str, int], ...] = ()
    """(institution_id, institution, count) — institutions with at least one suspect."""
    transitions: tuple[tuple[str, str, str, str, int], ...] = ()
    """(institution_id, institution, from_category, to_category, count)"""
    broken_since: dict[str, array] = field(default_factory=dict)
    """category → sorted epoch seconds at which each broken account left ok."""
    broken_sums: dict[str, float] = field(default_factory=dict)
    success_ts: array = field(default_factory=lambda: array("d"))
    """sorted epoch seconds of each account's last success."""
    success_sum: float = 0.0
    never_succeeded: int = 0
    state_accounts: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The aggregates of every source at one moment; replaced whole, never mutated."""

    version: int = 0
    sources: dict[str, SourceAggregate] = field(default_factory=dict)


class Tracker:
    """Applies sweeps to the state store and publishes snapshots."""

    def __init__(
        self,
        store: StateStore,
        *,
        catalog: Catalog | None = None,
        clock: Callable[[], float],
        otp_streak_threshold: int = 3,
        institution_min_accounts: int = 0,
        events: TrackerEvents | None = None,
        batch_size: int = 5000,
    ):
        self.store = store
        self.catalog = catalog or Catalog.default()
        self.clock = clock
        self.otp_streak_threshold = otp_streak_threshold
        self.institution_min_accounts = institution_min_accounts
        self.events = events or _NoEvents()
        self.batch_size = batch_size
        self._snapshot = Snapshot()
        self._unknown_logged: set[tuple[str, str]] = set()
        self._invalid_logged: set[tuple[str, str]] = set()
        self._code_cache: dict[tuple[str, object], tuple[str, str, int, bool] | None] = {}
        self._labels: dict[tuple[object, object], tuple[str, str]] = {}

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    def begin(self, source: str, provider: str) -> SweepSession:
        return SweepSession(self, source, provider, self.store.next_sweep_id(source))

    async def load(self, sources: dict[str, str]) -> None:
        """Publish aggregates for configured sources from the state left by a previous run."""
        for name, provider in sources.items():
            await self.publish(name, provider)

    async def publish(self, source: str, provider: str) -> None:
        """Rebuild one source's aggregates from the store (off the event loop) and swap in."""
        agg = await asyncio.to_thread(self._aggregate, source, provider)
        self._swap(agg)

    def publish_sync(self, source: str, provider: str) -> None:
        self._swap(self._aggregate(source, provider))

    def _swap(self, agg: SourceAggregate) -> None:
        old = self._snapshot
        self._snapshot = Snapshot(old.version + 1, {**old.sources, agg.source: agg})

    # -- per record -------------------------------------------------------------------

    def _resolve(self, source: str, provider: str, raw_code: object):
        """(code label, category, fixable, counts toward the OTP streak) for a raw code."""
        key = (provider, raw_code)
        try:
            hit = self._code_cache.get(key, False)
        except TypeError:  # an unhashable "code" (a list, a dict)
            hit, key = None, None
        if hit is not False:
            return hit
        if raw_code is None and provider == "finicity":
            code: str | None = "NONE"
        else:
            code = normalise_code(provider, raw_code)
        if code is None:
            result = None
        else:
            info = self.catalog.lookup(provider, code)
            otp = code == "185" if provider == "finicity" else info.category == "mfa"
            result = (code, info.category, int(info.fixable), otp)
        if key is not None:
            self._code_cache[key] = result
        return result

    def note_invalid(self, source: str, reason: str) -> None:
        self.events.invalid_record(source, reason)
        if (source, reason) not in self._invalid_logged:
            self._invalid_logged.add((source, reason))
            log.warning("invalid record skipped or repaired source=%s reason=%s "
                        "(further ones are only counted)", source, reason)

    def note_unknown(self, source: str, provider: str, code: str) -> None:
        self.events.unknown_code(source, provider)
        if (provider, code) not in self._unknown_logged:
            self._unknown_logged.add((provider, code))
            log.warning("unknown status code counted as category unknown source=%s "
                        "provider=%s code=%s", source, provider, code)

    def _timestamp(self, source: str, value: object, now: float) -> float | None:
        if value is None:
            return None
        if type(value) is float and _MIN_TS <= value <= now + _MAX_AHEAD:
            return value
        if (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value) and _MIN_TS <= value <= now + _MAX_AHEAD):
            return float(value)
        self.note_invalid(source, "absurd_timestamp")
        return None

    def next_state(self, rec: AccountStatus, inst_id: str, prev: AccountRow | None, resolved,
                   now: float):
        """The new stored row for one record, plus the transition it makes (if any)."""
        code, category, fixable, otp_code = resolved
        attempt = self._timestamp(rec.source, rec.attempt_ts, now)
        success = self._timestamp(rec.source, rec.success_ts, now)
        if prev is None:
            streak, after_fix, relapsed = 0, 0, 0
            prev_attempt = None
            broken = None if category in ("ok", "manual") else (attempt or now)
        else:
            streak, after_fix, relapsed = prev.mfa_streak, prev.after_fix, prev.relapsed
            prev_attempt = prev.attempt_ts
            if success is None:
                success = prev.success_ts
            if category in ("ok", "manual"):
                broken = None
            elif prev.broken_since is not None:
                broken = prev.broken_since
            else:
                broken = attempt or now
        if attempt is not None and (prev_attempt is None or attempt > prev_attempt):
            # A new, distinct aggregation attempt: only these move the MFA streak.
            if otp_code:
                relapsed = 1 if (after_fix or relapsed) else 0
                streak += 1
                after_fix = 0
            elif category == "ok":
                after_fix = 1 if streak > 0 else 0
                streak, relapsed = 0, 0
            else:
                streak, after_fix, relapsed = 0, 0, 0
        elif attempt is None and prev_attempt is not None:
            attempt = prev_attempt
        otp = 1 if otp_code and (streak >= self.otp_streak_threshold or relapsed) else 0
        row = AccountRow(rec.provider, inst_id, code, category, fixable, attempt, success, broken,
                         streak, after_fix, relapsed, otp)
        moved = (prev.category, category) if prev is not None and prev.category != category else None
        return row, moved

    # -- aggregation --------------------------------------------------------------------

    def _aggregate(self, source: str, provider: str) -> SourceAggregate:
        conn = self.store.reader()
        try:
            rows = read_source(conn, source)
        finally:
            conn.close()
        return build_aggregate(source, provider, rows, self.institution_min_accounts)


def build_aggregate(source: str, provider: str, rows: SourceRows, fold_below: int) -> SourceAggregate:
    """Group the stored rows into label sets; fold small institutions into ``other``."""
    per_inst: dict[str, int] = defaultdict(int)
    for _p, inst_id, _c, _cat, _f, n, _o in rows.accounts:
        per_inst[inst_id] += n

    def label(inst_id: str) -> tuple[str, str]:
        if fold_below and per_inst.get(inst_id, 0) < fold_below:
            return OTHER, OTHER
        return inst_id, rows.institutions.get(inst_id, inst_id)

    accounts: dict[tuple[str, str, str, str], int] = defaultdict(int)
    fixable: dict[tuple[str, str, str], int] = defaultdict(int)
    otp: dict[tuple[str, str], int] = defaultdict(int)
    for _p, inst_id, code, category, fix, n, n_otp in rows.accounts:
        inst = label(inst_id)
        accounts[(*inst, code, category)] += n
        if fix:
            fixable[(*inst, code)] += n
        if n_otp:
            otp[inst] += n_otp
    transitions: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for _p, inst_id, frm, to, n in rows.transitions:
        transitions[(*label(inst_id), frm, to)] += n
    return SourceAggregate(
        source=source,
        provider=provider,
        accounts=tuple((*k, n) for k, n in sorted(accounts.items())),
        fixable=tuple((*k, n) for k, n in sorted(fixable.items())),
        otp_suspected=tuple((*k, n) for k, n in sorted(otp.items())),
        transitions=tuple((*k, n) for k, n in sorted(transitions.items())),
        broken_since=rows.broken_since,
        broken_sums={c: math.fsum(v) for c, v in rows.broken_since.items()},
        success_ts=rows.success_ts,
        success_sum=math.fsum(rows.success_ts),
        never_succeeded=rows.never_succeeded,
        state_accounts=len(rows.success_ts) + rows.never_succeeded,
    )


class SweepSession:
    """One sweep of one source: the :class:`~exporter.sources.base.SweepSink` it writes to."""

    def __init__(self, tracker: Tracker, source: str, provider: str, sweep_id: int):
        self.tracker = tracker
        self.source = source
        self.provider = provider
        self.sweep_id = sweep_id
        self.records = 0
        self.on_progress: Callable[[int, int | None], None] | None = None
        self._pending: list[AccountStatus] = []

    def progress(self, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    def add(self, records: Sequence[AccountStatus]) -> None:
        self._pending.extend(records)
        while len(self._pending) >= self.tracker.batch_size:
            chunk = self._pending[: self.tracker.batch_size]
            del self._pending[: self.tracker.batch_size]
            self._apply(chunk)

    def flush(self) -> None:
        if self._pending:
            chunk, self._pending = self._pending, []
            self._apply(chunk)

    def _apply(self, chunk: Sequence[AccountStatus]) -> None:
        tracker = self.tracker
        now = tracker.clock()
        valid: dict[str, tuple[AccountStatus, tuple]] = {}
        for rec in chunk:
            key = rec.account_key
            if not isinstance(key, str) or not key or rec.source != self.source:
                tracker.note_invalid(self.source, "missing_field")
                continue
            resolved = tracker._resolve(self.source, rec.provider, rec.code)
            if resolved is None:
                tracker.note_invalid(self.source, "malformed_code")
                continue
            if resolved[1] == "unknown":
                tracker.note_unknown(self.source, rec.provider, resolved[0])
            valid[key] = (rec, resolved)  # a key seen twice in a chunk: the last one wins
        previous = tracker.store.load_accounts(self.source, list(valid))
        rows: list[tuple[str, AccountRow]] = []
        transitions: dict[tuple[str, str, str, str], int] = defaultdict(int)
        names: dict[str, str] = {}
        labels = tracker._labels
        for key, (rec, resolved) in valid.items():
            raw = (rec.institution_id, rec.institution)
            cleaned = labels.get(raw)
            if cleaned is None:
                inst_id = clean_label(rec.institution_id, "unknown")
                cleaned = (inst_id, clean_label(rec.institution, inst_id))
                if len(labels) < 100_000:
                    labels[raw] = cleaned
            inst_id, name = cleaned
            if name != inst_id or inst_id not in names:
                names[inst_id] = name
            row, moved = tracker.next_state(rec, inst_id, previous.get(key), resolved, now)
            rows.append((key, row))
            if moved is not None:
                transitions[(rec.provider, inst_id, *moved)] += 1
        tracker.store.write_chunk(self.source, self.sweep_id, rows, transitions, names)
        self.records += len(rows)

    async def finish(self, report: SweepReport) -> None:
        """Apply what is pending; on a complete sweep drop unseen accounts; publish."""
        self.flush()
        if report.complete:
            dropped = self.tracker.store.drop_unseen(self.source, self.sweep_id)
            if dropped:
                log.info("dropped accounts no longer present upstream source=%s count=%d",
                         self.source, dropped)
        await self.tracker.publish(self.source, self.provider)
