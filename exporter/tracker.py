"""The tracker: records in, per-account state and an immutable snapshot of aggregates out.

For each record it resolves the code through the catalog, compares with the stored state
to count category transitions and MFA streaks per *distinct aggregation attempt*, and
writes the new state back in batches. Each source's aggregates (accounts per label set,
ages per minute) live in a :class:`FleetState` that every committed chunk updates by the
difference between the old and new rows, so finishing a sweep costs a step per series,
not per account; at start-up the aggregates are rebuilt from the state database. When a
sweep finishes the tracker swaps in a new :class:`Snapshot`; the collector only ever reads
the current snapshot.

All work on the state store runs on one writer thread, in order: the event loop keeps
serving scrapes, probes and upstream responses while a chunk is applied (SQLite releases
the GIL while it works), and the store's single connection is never used by two threads.

A failed sweep changes nothing; a partial one updates only the accounts it read (the rest
keep their last state); only a complete sweep drops accounts it did not see.
"""

from __future__ import annotations

import asyncio
import logging
import math
from array import array
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from exporter.catalog import Catalog, normalise_code
from exporter.records import AccountStatus
from exporter.sources.base import SweepReport
from exporter.state import (
    AFTER_FIX,
    MINUTE,
    OTP,
    RELAPSED,
    Contributions,
    StateStore,
    read_contributions,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

OTHER = "other"
# Timestamps before 2000-01-01 or more than two days ahead are treated as absent.
_MIN_TS = 946_684_800.0
_MAX_AHEAD = 2 * 86400.0
_MAX_LABEL = 200
# Reading ahead scans at most this many ids per row wanted (the table holds every source).
_AHEAD_SPAN = 4


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
class AgeHistogram:
    """Accounts counted per minute of a timestamp, ascending, for age buckets at scrape time."""

    minutes: array
    """distinct minute starts (epoch seconds), ascending"""
    cumulative: array
    """accounts whose minute is at or before ``minutes[i]``"""
    total: int
    time_sum: float
    """sum over accounts of their (minute) timestamps, for the histogram's _sum"""

    @classmethod
    def of(cls, per_minute: dict[float, int]) -> AgeHistogram:
        minutes, cumulative, running, time_sum = array("d"), array("q"), 0, 0
        for minute in sorted(per_minute):
            n = per_minute[minute]
            running += n
            time_sum += int(minute) * n
            minutes.append(minute * MINUTE)
            cumulative.append(running)
        return cls(minutes, cumulative, running, float(time_sum * int(MINUTE)))

    def since(self, ts: float) -> int:
        """Accounts whose timestamp is at or after ``ts``, to the minute: an account counts
        when its minute ends after ``ts`` (so an age bucket errs by under a minute, young)."""
        i = bisect_right(self.minutes, ts - MINUTE)
        return self.total - (self.cumulative[i - 1] if i else 0)

    def __iter__(self):
        """Each account's minute timestamp, ascending (for tests and debugging)."""
        before = 0
        for minute, upto in zip(self.minutes, self.cumulative, strict=True):
            yield from [minute] * (upto - before)
            before = upto


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
    broken_since: dict[str, AgeHistogram] = field(default_factory=dict)
    """category → when each broken account left ok."""
    success: AgeHistogram = field(default_factory=lambda: AgeHistogram.of({}))
    """when each account last aggregated successfully (accounts that never did excluded)."""
    never_succeeded: int = 0
    state_accounts: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The aggregates of every source at one moment; replaced whole, never mutated."""

    version: int = 0
    sources: dict[str, SourceAggregate] = field(default_factory=dict)


def _move(counter: Counter, key, n: int) -> None:
    """Add ``n`` (maybe negative) to ``counter[key]``; a key that reaches zero goes."""
    left = counter[key] + n
    if left:
        counter[key] = left
    else:
        del counter[key]


def _shift(counter: Counter, added: Iterable, removed: Iterable) -> None:
    """Count ``added`` in and ``removed`` out of ``counter`` (both counted in C)."""
    counter.update(added)
    for key, n in Counter(removed).items():
        _move(counter, key, -n)


class ChunkDelta:
    """How one chunk changes a source's aggregates: the keys its old rows counted under
    (removed) and its new rows count under (added), gathered per record as plain appends
    and counted in C when the chunk is committed."""

    __slots__ = (
        "accounts",
        "broken",
        "gone_accounts",
        "gone_broken",
        "gone_otp",
        "gone_success",
        "never",
        "otp",
        "success",
    )

    def __init__(self) -> None:
        self.accounts: list[tuple[str, str, str, int]] = []
        self.gone_accounts: list[tuple[str, str, str, int]] = []
        self.otp: list[str] = []
        self.gone_otp: list[str] = []
        self.broken: list[tuple[str, float]] = []
        self.gone_broken: list[tuple[str, float]] = []
        self.success: list[float] = []
        self.gone_success: list[float] = []
        self.never = 0


class FleetState:
    """One source's aggregates, kept in step with its stored rows.

    Derived data: built from the store by :meth:`merge` at start-up, then moved by each
    committed chunk (:meth:`apply`) and each drop of accounts gone upstream. Its size is the
    number of label sets and distinct minutes, never the number of accounts.
    """

    def __init__(self) -> None:
        self.accounts: Counter[tuple[str, str, str, int]] = Counter()
        """(institution_id, code, category, fixable) → accounts"""
        self.otp: Counter[str] = Counter()
        """institution_id → OTP suspects"""
        self.broken: Counter[tuple[str, float]] = Counter()
        """(category, minute of broken_since) → accounts"""
        self.success: Counter[float] = Counter()
        """minute of the last success → accounts"""
        self.never = 0

    def merge(self, rows: Contributions, classify: Callable[[str], tuple[str, int]],
              sign: int = 1) -> None:
        """Add (``sign=1``) or remove (``-1``) what a set of stored rows contributes;
        ``classify`` gives a stored code's (category, fixable)."""
        for inst, code, n, n_otp in rows.accounts:
            _move(self.accounts, (inst, code, *classify(code)), sign * n)
            if n_otp:
                _move(self.otp, inst, sign * n_otp)
        for code, minute, n in rows.broken:
            _move(self.broken, (classify(code)[0], float(minute)), sign * n)
        for minute, n in rows.success:
            _move(self.success, float(minute), sign * n)
        self.never += sign * rows.never_succeeded

    def total(self) -> int:
        """Accounts stored for the source."""
        return sum(self.accounts.values())

    def apply(self, delta: ChunkDelta) -> None:
        _shift(self.accounts, delta.accounts, delta.gone_accounts)
        _shift(self.otp, delta.otp, delta.gone_otp)
        _shift(self.broken, delta.broken, delta.gone_broken)
        _shift(self.success, delta.success, delta.gone_success)
        self.never += delta.never

    def aggregate(self, source: str, provider: str, names: dict[str, str],
                  transitions: Iterable[tuple[str, str, str, str, int]],
                  fold_below: int) -> SourceAggregate:
        """Group into label sets (small institutions fold into ``other``) and age histograms."""
        per_inst: dict[str, int] = defaultdict(int)
        for (inst_id, _c, _cat, _f), n in self.accounts.items():
            per_inst[inst_id] += n

        def label(inst_id: str) -> tuple[str, str]:
            if fold_below and per_inst.get(inst_id, 0) < fold_below:
                return OTHER, OTHER
            return inst_id, names.get(inst_id, inst_id)

        accounts: dict[tuple[str, str, str, str], int] = defaultdict(int)
        fixable: dict[tuple[str, str, str], int] = defaultdict(int)
        otp: dict[tuple[str, str], int] = defaultdict(int)
        for (inst_id, code, category, fix), n in self.accounts.items():
            inst = label(inst_id)
            accounts[(*inst, code, category)] += n
            if fix:
                fixable[(*inst, code)] += n
        for inst_id, n in self.otp.items():
            otp[label(inst_id)] += n
        moved: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for _p, inst_id, frm, to, n in transitions:
            moved[(*label(inst_id), frm, to)] += n
        broken: dict[str, dict[float, int]] = defaultdict(dict)
        for (category, minute), n in self.broken.items():
            broken[category][minute] = n
        success = AgeHistogram.of(self.success)
        return SourceAggregate(
            source=source,
            provider=provider,
            accounts=tuple((*k, n) for k, n in sorted(accounts.items())),
            fixable=tuple((*k, n) for k, n in sorted(fixable.items())),
            otp_suspected=tuple((*k, n) for k, n in sorted(otp.items())),
            transitions=tuple((*k, n) for k, n in sorted(moved.items())),
            broken_since={c: AgeHistogram.of(m) for c, m in sorted(broken.items())},
            success=success,
            never_succeeded=self.never,
            state_accounts=success.total + self.never,
        )


class Tracker:
    """Applies sweeps to the state store and publishes snapshots."""

    batch_size_default = 20_000

    def __init__(
        self,
        store: StateStore,
        *,
        catalog: Catalog | None = None,
        clock: Callable[[], float],
        otp_streak_threshold: int = 3,
        institution_min_accounts: int = 0,
        events: TrackerEvents | None = None,
        batch_size: int = batch_size_default,
    ):
        self.store = store
        self.catalog = catalog or Catalog.default()
        self.clock = clock
        self.otp_streak_threshold = otp_streak_threshold
        self.institution_min_accounts = institution_min_accounts
        self.events = events or _NoEvents()
        self.batch_size = batch_size
        self._snapshot = Snapshot()
        self._fleets: dict[str, FleetState] = {}
        self._unknown_logged: set[tuple[str, str]] = set()
        self._invalid_logged: set[tuple[str, str]] = set()
        self._code_cache: dict[tuple[str, object], tuple | None] = {}
        """(provider, raw code) → (code, category, fixable, OTP code, ok, healthy)"""
        self._labels: dict[tuple[object, object], tuple[str, str]] = {}
        self._class_cache: dict[tuple[str, str], tuple[str, int]] = {}
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-writer")

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    async def _run(self, fn: Callable[..., T], *args) -> T:
        """Run ``fn`` on the writer thread (store and fleet state are only touched there)."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    async def begin(self, source: str, provider: str) -> SweepSession:
        last_id, stored = await self._run(self._begin, source, provider)
        return SweepSession(self, source, provider, last_id, stored)

    def _begin(self, source: str, provider: str) -> tuple[int, int]:
        """(highest account id, accounts stored for ``source``) as a sweep begins."""
        if source not in self._fleets:
            self._fleets[source] = self._read_fleet(source, provider)
        return self.store.last_id(), self._fleets[source].total()

    def fleet(self, source: str) -> FleetState:
        """The live aggregates of one source (empty until it is loaded or swept)."""
        return self._fleets.setdefault(source, FleetState())

    async def load(self, sources: dict[str, str]) -> None:
        """Rebuild the aggregates of configured sources from the state a previous run left
        (grouped in SQLite, one scan per aggregate) and publish them."""
        for name, provider in sources.items():
            await self._run(self._load, name, provider)

    def _load(self, source: str, provider: str) -> None:
        self._fleets[source] = self._read_fleet(source, provider)
        self.publish_sync(source, provider)

    def _read_fleet(self, source: str, provider: str) -> FleetState:
        fleet = FleetState()
        fleet.merge(read_contributions(self.store.connection, source),
                    lambda code: self.classify(provider, code))
        return fleet

    def publish_sync(self, source: str, provider: str) -> None:
        """Build one source's aggregate (a step per series, not per account) and swap it in;
        on the writer thread."""
        names, transitions = self.store.labels(source)
        agg = self.fleet(source).aggregate(source, provider, names, transitions,
                                           self.institution_min_accounts)
        old = self._snapshot
        self._snapshot = Snapshot(old.version + 1, {**old.sources, source: agg})

    async def close(self) -> None:
        """Wait for the writer's queued work, then flush and close the store."""
        await self._run(self.store.close)
        self._writer.shutdown(wait=True)

    # -- per record -------------------------------------------------------------------

    def _resolve(self, source: str, provider: str, raw_code: object):
        """(code label, category, fixable, counts toward the OTP streak, ok, healthy: ok or
        manual) for a raw code, or None when it is junk."""
        key = (provider, raw_code)
        try:
            hit = self._code_cache.get(key, False)
        except TypeError:  # an unhashable "code" (a list, a dict)
            hit, key = None, None
        if hit is not False:
            return hit
        if raw_code in (None, "NONE") and provider == "finicity":  # sources send "NONE"
            code: str | None = "NONE"
        else:
            code = normalise_code(provider, raw_code)
        if code is None:
            result = None
        else:
            info = self.catalog.lookup(provider, code)
            otp = code == "185" if provider == "finicity" else info.category == "mfa"
            ok = info.category == "ok"
            result = (code, info.category, int(info.fixable), otp, ok,
                      ok or info.category == "manual")
        if key is not None:
            self._code_cache[key] = result
        return result

    def classify(self, provider: str, code: str) -> tuple[str, int]:
        """(category, fixable) of a code as stored (already normalised)."""
        key = (provider, code)
        hit = self._class_cache.get(key)
        if hit is None:
            info = self.catalog.lookup(provider, code)
            hit = self._class_cache[key] = (info.category, int(info.fixable))
        return hit

    def _institution(self, raw_id: object, raw_name: object) -> tuple[str, str]:
        """(institution_id, institution) as label-safe strings, cached per raw pair."""
        raw = (raw_id, raw_name)
        try:
            cleaned = self._labels.get(raw)
        except TypeError:  # unhashable junk
            cleaned, raw = None, None
        if cleaned is None:
            inst_id = clean_label(raw_id, "unknown")
            cleaned = (inst_id, clean_label(raw_name, inst_id))
            if raw is not None and len(self._labels) < 100_000:
                self._labels[raw] = cleaned
        return cleaned

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

    def timestamp(self, source: str, value: object, now: float) -> float | None:
        """A plausible epoch-seconds float, or None (absurd values are counted)."""
        if value is None:
            return None
        if (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value) and _MIN_TS <= value <= now + _MAX_AHEAD):
            return float(value)
        self.note_invalid(source, "absurd_timestamp")
        return None


class SweepSession:
    """One sweep of one source: the :class:`~exporter.sources.base.SweepSink` it writes to."""

    def __init__(self, tracker: Tracker, source: str, provider: str, last_id: int,
                 stored: int):
        self.tracker = tracker
        self.source = source
        self.provider = provider
        self._upto = last_id
        self._seen = bytearray((last_id >> 3) + 1)
        """one bit per account id that existed when the sweep began: set once it is read"""
        self._stored = stored
        self._seen_count = 0
        self._ahead: dict[str, tuple] = {}
        """stored rows read ahead in id order (the order the accounts were first seen)"""
        self._ahead_from = 0
        self.records = 0
        self.on_progress: Callable[[int, int | None], None] | None = None
        self._pending: list[AccountStatus] = []

    def progress(self, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    async def add(self, records: Sequence[AccountStatus]) -> None:
        """Take a chunk of records; every full batch is applied (on the writer thread)
        before this returns, so a fast upstream never piles records up in memory."""
        self._pending.extend(records)
        while len(self._pending) >= self.tracker.batch_size:
            chunk = self._pending[: self.tracker.batch_size]
            del self._pending[: self.tracker.batch_size]
            await self.tracker._run(self._apply, chunk)

    def _valid(self, chunk: Sequence[AccountStatus]) -> dict[str, tuple[AccountStatus, tuple]]:
        """The chunk's usable records by key (a key seen twice: the last one wins)."""
        tracker, source = self.tracker, self.source
        codes = tracker._code_cache
        valid: dict[str, tuple[AccountStatus, tuple]] = {}
        for rec in chunk:
            key = rec.account_key
            if type(key) is not str or not key or rec.source != source or not (
                    key.isascii() or key.encode("utf-8", "replace").decode() == key):
                tracker.note_invalid(source, "missing_field")
                continue
            try:
                resolved = codes[(rec.provider, rec.code)]
            except (KeyError, TypeError):  # not seen yet, or junk
                resolved = tracker._resolve(source, rec.provider, rec.code)
            if resolved is None:
                tracker.note_invalid(source, "malformed_code")
                continue
            if resolved[1] == "unknown":
                tracker.note_unknown(source, rec.provider, resolved[0])
            valid[key] = (rec, resolved)
        return valid

    def _previous(self, keys: Collection[str]) -> dict[str, tuple]:
        """The stored rows of a chunk's keys.

        A sweep pages through the accounts in about the order it did the night they were
        first seen, which is the table's id order. So the rows are read ahead in id order
        (a sequential range) and matched by key; only keys not found that way (new
        accounts, or ones the sweep reached out of order) are looked up in the key index.
        Rows read ahead but not yet asked for wait for the next chunks, within a bound.
        """
        store, ahead = self.tracker.store, self._ahead
        found: dict[str, tuple] = {}
        missing = self._take(keys, found)
        if missing and self._stored and self._ahead_from < self._upto:
            # a bounded id range: other sources' rows may sit in between
            end = min(self._upto, self._ahead_from + _AHEAD_SPAN * len(missing))
            rows = store.rows_after(self.source, self._ahead_from, end, len(missing))
            self._ahead_from = rows[-1][0] if len(rows) == len(missing) else end
            if rows:
                for row in rows:
                    ahead[row[1]] = row
                missing = self._take(missing, found)
            bound = 2 * self.tracker.batch_size
            while len(ahead) > bound:  # skipped over: found through the index if they come
                del ahead[next(iter(ahead))]
        if missing:
            found.update(store.load_accounts(self.source, sorted(missing)))
        return found

    def _take(self, keys: Iterable[str], found: dict[str, tuple]) -> list[str]:
        """Move the rows read ahead for ``keys`` into ``found``; return the other keys."""
        ahead, missing = self._ahead, []
        for key in keys:
            row = ahead.pop(key, None)
            if row is None:
                missing.append(key)
            else:
                found[key] = row
        return missing

    def _apply(self, chunk: Sequence[AccountStatus]) -> None:
        """Move each account of the chunk to its next state; write and count the chunk.

        The stored row of an account holds its MFA streak over *distinct* aggregation
        attempts: only an attempt later than the stored one moves it. 185 (MX: category
        mfa) extends it; a success ends it and remembers there was one (``AFTER_FIX``), so
        falling back to 185 right after a fix is a relapse; anything else resets it.
        """
        tracker, source, provider = self.tracker, self.source, self.provider
        seen, upto = self._seen, self._upto
        threshold = tracker.otp_streak_threshold
        classify = tracker.classify
        institution, labels = tracker._institution, tracker._labels
        now = tracker.clock()
        latest = now + _MAX_AHEAD
        valid = self._valid(chunk)
        previous = self._previous(valid.keys())
        updates: list[tuple] = []
        stamps: list[tuple] = []
        inserts: list[tuple] = []
        transitions: dict[tuple[str, str, str, str], int] = defaultdict(int)
        names: dict[str, str] = {}
        delta = ChunkDelta()
        for key, (rec, (code, category, fixable, otp_code, ok, healthy)) in valid.items():
            try:
                inst_id, name = labels[(rec.institution_id, rec.institution)]
            except (KeyError, TypeError):
                inst_id, name = institution(rec.institution_id, rec.institution)
            if name != inst_id or inst_id not in names:
                names[inst_id] = name
            attempt, success = rec.attempt_ts, rec.success_ts
            if attempt is not None and not (type(attempt) is float and _MIN_TS <= attempt <= latest):
                attempt = tracker.timestamp(source, attempt, now)
            if success is not None and not (type(success) is float and _MIN_TS <= success <= latest):
                success = tracker.timestamp(source, success, now)
            prev = previous.get(key)
            if prev is None:
                streak = flags = 0
                prev_attempt = None
                broken = None if healthy else (attempt or now)
            else:
                row_id, _k, p_inst, p_code, prev_attempt, p_success, p_broken, streak, p_flags = prev
                flags = p_flags
                if success is None:
                    success = p_success
                broken = None if healthy else (p_broken or attempt or now)
            if attempt is not None and (prev_attempt is None or attempt > prev_attempt):
                if otp_code:  # a new attempt, MFA again
                    flags = RELAPSED if flags & (AFTER_FIX | RELAPSED) else 0
                    streak += 1
                elif ok:
                    flags = AFTER_FIX if streak else 0
                    streak = 0
                else:
                    streak = flags = 0
            elif prev_attempt is not None:
                attempt = prev_attempt  # the same or an older attempt: keep the newest seen
            flags &= ~OTP
            if otp_code and (streak >= threshold or flags & RELAPSED):
                flags |= OTP
            otp = flags & OTP
            if prev is None:
                inserts.append((source, key, inst_id, code, attempt, success, broken, streak,
                                flags))
                delta.accounts.append((inst_id, code, category, fixable))
                if otp:
                    delta.otp.append(inst_id)
                if broken is not None:
                    delta.broken.append((category, broken // MINUTE))
                if success is None:
                    delta.never += 1
                else:
                    delta.success.append(success // MINUTE)
                continue
            if row_id <= upto:  # (a row inserted earlier in this sweep is seen anyway)
                bit = 1 << (row_id & 7)
                if not seen[row_id >> 3] & bit:
                    seen[row_id >> 3] |= bit
                    self._seen_count += 1
            if (p_code == code and p_inst == inst_id and p_broken == broken
                    and p_flags == flags and prev[7] == streak):
                # the usual night: at most the attempt and the success moved
                if prev_attempt != attempt or p_success != success:
                    stamps.append((attempt, success, row_id))
            else:
                updates.append((inst_id, code, attempt, success, broken, streak, flags, row_id))
                # what the aggregates lose from the old row and gain from the new one
                p_category, p_fixable = ((category, fixable) if p_code == code
                                         else classify(provider, p_code))
                if p_code != code or p_inst != inst_id:
                    delta.gone_accounts.append((p_inst, p_code, p_category, p_fixable))
                    delta.accounts.append((inst_id, code, category, fixable))
                    if p_category != category:
                        transitions[(provider, inst_id, p_category, category)] += 1
                p_otp = p_flags & OTP
                if p_otp != otp or (otp and p_inst != inst_id):
                    if p_otp:
                        delta.gone_otp.append(p_inst)
                    if otp:
                        delta.otp.append(inst_id)
                if p_broken != broken or p_category != category:
                    if p_broken is not None:
                        delta.gone_broken.append((p_category, p_broken // MINUTE))
                    if broken is not None:
                        delta.broken.append((category, broken // MINUTE))
            if p_success != success:
                if p_success is None:
                    delta.never -= 1
                else:
                    delta.gone_success.append(p_success // MINUTE)
                delta.success.append(success // MINUTE)
        inserts.sort()  # in key order: neighbouring inserts share index pages
        tracker.store.write_chunk(source, updates, stamps, inserts, transitions, names)
        tracker.fleet(source).apply(delta)  # only once the chunk is committed
        self.records += len(valid)

    async def finish(self, report: SweepReport) -> None:
        """Apply what is pending; on a complete sweep drop unseen accounts; publish."""
        await self.tracker._run(self._finish, report)

    def _finish(self, report: SweepReport) -> None:
        if self._pending:
            chunk, self._pending = self._pending, []
            self._apply(chunk)
        if report.complete and self._seen_count < self._stored:
            gone = self.tracker.store.drop_unseen(self.source, self._seen, self._upto)
            if gone is not None:
                self.tracker.fleet(self.source).merge(
                    gone, lambda code: self.tracker.classify(self.provider, code), -1)
                log.info("dropped accounts no longer present upstream source=%s count=%d",
                         self.source, sum(n for _i, _c, n, _o in gone.accounts))
        self.tracker.publish_sync(self.source, self.provider)
