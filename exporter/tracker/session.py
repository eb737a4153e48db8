"""One sweep of one source, as storage: batching, read-ahead, the seen-bitmap, narrow updates.

The rule itself is :func:`~exporter.tracker.transition.transition` (the next state, the
events and the aggregates' delta); this module only finds each account's previous state,
calls the rule, and writes what changed in one transaction per chunk, with the aggregates
moved and the events emitted only once it committed. What it may use of the tracker comes
in a :class:`SweepContext`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.records import STATUS_MISSING, AccountStatus
from exporter.sources.base import SweepReport
from exporter.state.accounts import StateStore
from exporter.tracker.aggregates import ChunkDelta, FleetState
from exporter.tracker.events import AccountEvent
from exporter.tracker.transition import STORED_FIELDS, AccountState, CodeFacts, transition

# Reading ahead scans at most this many ids per row wanted (the table holds every source).
_AHEAD_SPAN = 4
_new_state = tuple.__new__  # (AccountState, row fields): a NamedTuple built in C


@dataclass(frozen=True, slots=True)
class SweepContext:
    """What a session uses, and all it uses: the tracker builds one per session."""

    store: StateStore
    batch_size: int
    run: Callable[..., Awaitable[Any]]
    """runs a function on the writer thread"""
    deliver: Callable[[Sequence[AccountEvent]], Awaitable[None]]
    """hands committed events to the subscribers"""
    clock: Callable[[], float]
    otp_threshold: int
    emit: bool
    """anyone receives events (if not, none are built)"""
    steady: bool
    """a subscriber wants STILL_BROKEN events"""
    facts: Mapping[str, CodeFacts]
    """the source's cached code facts"""
    resolve: Callable[[str], CodeFacts]
    """the facts of a code not cached yet (an unknown one, maybe ``other``)"""
    classes: Mapping[str, tuple[str, bool]]
    """(category, fixable) of a stored code"""
    fleet: Callable[[], FleetState]
    """the source's live aggregates"""
    note_unknown: Callable[[int], None]
    """count records that carried a code unknown to the catalog"""
    written: Callable[[SweepSession, Iterable[str]], None]
    """after a session's commit: the source's other open sessions forget these keys"""
    ended: Callable[[SweepSession], None]
    """a finished session no longer hears of other writes"""
    drop_unseen: Callable[[bytearray, int], list[AccountEvent]]
    """deletes the accounts a complete sweep did not see; their REMOVED events"""
    publish: Callable[[], None]
    """swaps in the source's new aggregate"""


class SweepSession:
    """One sweep of one source: the :class:`~exporter.sources.base.SweepSink` it writes to.

    ``read_ahead=False`` (pushed re-reads of a few accounts) finds rows through the key
    index only.
    """

    def __init__(self, context: SweepContext, source: str, provider: str, last_id: int,
                 stored: int, *, read_ahead: bool = True):
        self.context = context
        self.source = source
        self.provider = provider
        self._upto = last_id
        self._seen = bytearray((last_id >> 3) + 1)
        """one bit per account id that existed when the sweep began: set once it is read"""
        self._stored = stored
        self._sweep = read_ahead
        """a sweep, not a pushed re-read of a few accounts"""
        self._read_ahead = read_ahead and stored > 0
        self._seen_count = 0
        self._ahead: dict[str, tuple] = {}
        """stored rows read ahead in id order (the order the accounts were first seen)"""
        self._ahead_from = 0
        self.records = 0
        self.on_progress: Callable[[int, int | None], None] | None = None
        self._pending: list[AccountStatus] = []
        self._unknown = 0
        """records of the chunk being applied that carried a code unknown to the catalog"""

    def progress(self, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    async def add(self, records: Sequence[AccountStatus]) -> None:
        """Take a chunk of records; every full batch is applied (on the writer thread) and
        its events delivered before this returns, so a fast upstream never piles records
        up in memory."""
        context, size = self.context, self.context.batch_size
        self._pending.extend(records)
        while len(self._pending) >= size:
            chunk = self._pending[:size]
            del self._pending[:size]
            await context.deliver(await context.run(self._apply, chunk))

    async def finish(self, report: SweepReport) -> None:
        """Apply what is pending; on a complete sweep drop unseen accounts; publish."""
        context = self.context
        await context.deliver(await context.run(self._finish, report))

    def forget(self, keys: Iterable[str]) -> None:
        """Another session of this source rewrote ``keys``: rows read ahead for them are stale."""
        if self._ahead:
            for key in keys:
                self._ahead.pop(key, None)

    def _previous(self, keys: Collection[str]) -> dict[str, tuple]:
        """The stored rows of a chunk's keys.

        A sweep pages through the accounts in about the order it did the night they were
        first seen, which is the table's id order. So the rows are read ahead in id order
        (a sequential range) and matched by key; only keys not found that way (new
        accounts, or ones the sweep reached out of order) are looked up in the key index.
        Rows read ahead but not yet asked for wait for the next chunks, within a bound.
        """
        store, ahead = self.context.store, self._ahead
        found: dict[str, tuple] = {}
        missing = self._take(keys, found) if ahead else list(keys)
        if missing and self._read_ahead and self._ahead_from < self._upto:
            # a bounded id range: other sources' rows may sit in between
            end = min(self._upto, self._ahead_from + _AHEAD_SPAN * len(missing))
            rows = store.rows_after(self.source, self._ahead_from, end, len(missing))
            self._ahead_from = rows[-1][0] if len(rows) == len(missing) else end
            if rows:
                for row in rows:
                    ahead[row[1]] = row
                missing = self._take(missing, found)
            bound = 2 * self.context.batch_size
            while len(ahead) > bound:  # skipped over: found through the index if they come
                del ahead[next(iter(ahead))]
        if missing:
            found.update(store.load_accounts(self.source, missing))
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

    def _apply(self, chunk: Sequence[AccountStatus]) -> list[AccountEvent]:
        """Move each account of the chunk to its next state (:func:`transition`); write the
        chunk in one transaction; then move the aggregates. Returns the chunk's events."""
        context, source = self.context, self.source
        seen, upto, classes, cached = self._seen, self._upto, context.classes, context.facts
        threshold, emit, steady = context.otp_threshold, context.emit, context.steady
        now = context.clock()
        latest: dict[str, AccountStatus] = {rec.account_key: rec for rec in chunk}
        previous = self._previous(latest.keys())  # (a key seen twice: the last one wins)
        interleave = context.store.database.interleave  # the inbox's commits, between steps
        interleave()
        updates: list[tuple] = []
        stamps: list[tuple] = []
        inserts: list[tuple] = []
        names: dict[str, str] = {}
        delta = ChunkDelta()
        events: list[AccountEvent] = []
        self._unknown = 0
        for key, rec in latest.items():
            facts = cached.get(rec.code) or self._facts(rec.code)
            if facts is None:  # drift: the answer lacked the status field
                self._keep(previous.get(key))
                continue
            inst_id, name = rec.institution_id, rec.institution
            if name != inst_id or inst_id not in names:
                names[inst_id] = name
            row = previous.get(key)
            if row is None:
                state, changes = transition(None, rec, facts, now, threshold, emit=emit,
                                            steady=steady, delta=delta)
                if changes:
                    events += changes
                inserts.append((source, key, *state[:STORED_FIELDS]))
                continue
            row_id = row[0]
            prev = _new_state(AccountState, row[2:] + classes[row[3]])
            state, changes = transition(prev, rec, facts, now, threshold, emit=emit,
                                        steady=steady, delta=delta)
            if changes:
                events += changes
            if row_id <= upto:  # (a row inserted earlier in this sweep is seen anyway)
                bit = 1 << (row_id & 7)
                if not seen[row_id >> 3] & bit:
                    seen[row_id >> 3] |= bit
                    self._seen_count += 1
            if state is prev:  # a re-poll: the same attempt seen again
                continue
            (p_inst, p_code, p_broken, p_streak, p_flags, p_attempt, p_success, p_consent,
             _pc, _pf) = prev
            (inst, code, broken, streak, flags, attempt, success, consent, _c, _f) = state
            if (p_code == code and p_inst == inst and p_streak == streak
                    and p_flags == flags and p_broken == broken and p_consent == consent):
                # the usual night: at most the attempt and the success moved
                if attempt != p_attempt or p_success != success:
                    stamps.append((attempt, success, row_id))
            else:
                updates.append((*state[:STORED_FIELDS], row_id))
        if self._unknown:
            context.note_unknown(self._unknown)
        transitions = Counter((self.provider, *moved) for moved in delta.moved)
        interleave()
        context.store.write_chunk(source, updates, stamps, inserts, transitions, names)
        # only once the chunk is committed:
        context.fleet().apply(delta)
        context.written(self, latest.keys())
        self.records += len(latest)
        return events

    def _facts(self, code: str) -> CodeFacts | None:
        """The facts of a code met for the first time or unknown to the catalog (counted
        per record); None for :data:`~exporter.records.STATUS_MISSING`."""
        if code == STATUS_MISSING:
            return None
        facts = self.context.resolve(code)
        if facts.category == "unknown":
            self._unknown += 1
        return facts

    def _keep(self, row: tuple | None) -> None:
        """An account read without its status keeps its last known state: it counts as
        seen (a complete sweep does not drop it) and nothing of it changes. One never seen
        before is not tracked until a status arrives."""
        if row is None or row[0] > self._upto:
            return
        row_id, seen = row[0], self._seen
        bit = 1 << (row_id & 7)
        if not seen[row_id >> 3] & bit:
            seen[row_id >> 3] |= bit
            self._seen_count += 1

    def _finish(self, report: SweepReport) -> list[AccountEvent]:
        context = self.context
        context.ended(self)
        events = []
        if self._pending:
            chunk, self._pending = self._pending, []
            events = self._apply(chunk)
        interleave = context.store.database.interleave
        if self._sweep or context.store.staged > context.batch_size:
            # index the accounts first seen (a pushed re-read leaves a few to the next sweep)
            interleave()
            context.store.merge_keys()
        if report.complete and self._seen_count < self._stored:
            interleave()
            events += context.drop_unseen(self._seen, self._upto)
        context.publish()
        return events
