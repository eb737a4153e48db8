"""One sweep of one source, as storage: batching, read-ahead, the seen-bitmap, narrow updates.

The rule itself is :func:`~exporter.tracker.transition.transition`; this module only finds
each account's previous state, calls the rule, and writes what changed in one transaction
per chunk, with the aggregates moved and the events emitted only once it committed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from exporter.records import STATUS_MISSING, AccountStatus
from exporter.sources.base import SweepReport
from exporter.state import DAY, MINUTE, OTP
from exporter.tracker.aggregates import ChunkDelta
from exporter.tracker.events import AccountEvent
from exporter.tracker.transition import STORED_FIELDS, AccountState, transition

if TYPE_CHECKING:
    from exporter.tracker.tracker import Tracker

# Reading ahead scans at most this many ids per row wanted (the table holds every source).
_AHEAD_SPAN = 4
_new_state = tuple.__new__  # (AccountState, row fields): a NamedTuple built in C


class SweepSession:
    """One sweep of one source: the :class:`~exporter.sources.base.SweepSink` it writes to.

    ``read_ahead=False`` (pushed re-reads of a few accounts) finds rows through the key
    index only.
    """

    def __init__(self, tracker: Tracker, source: str, provider: str, last_id: int,
                 stored: int, *, read_ahead: bool = True):
        self.tracker = tracker
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

    def progress(self, done: int, total: int | None) -> None:
        if self.on_progress is not None:
            self.on_progress(done, total)

    async def add(self, records: Sequence[AccountStatus]) -> None:
        """Take a chunk of records; every full batch is applied (on the writer thread) and
        its events delivered before this returns, so a fast upstream never piles records
        up in memory."""
        tracker = self.tracker
        self._pending.extend(records)
        while len(self._pending) >= tracker.batch_size:
            chunk = self._pending[: tracker.batch_size]
            del self._pending[: tracker.batch_size]
            await tracker.deliver(await tracker.run(self._apply, chunk))

    async def finish(self, report: SweepReport) -> None:
        """Apply what is pending; on a complete sweep drop unseen accounts; publish."""
        tracker = self.tracker
        await tracker.deliver(await tracker.run(self._finish, report))

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
        store, ahead = self.tracker.store, self._ahead
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
            bound = 2 * self.tracker.batch_size
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
        tracker, source = self.tracker, self.source
        seen, upto = self._seen, self._upto
        threshold, steady = tracker.otp_streak_threshold, tracker.steady
        emit = tracker.subscribed
        facts_of, resolve = tracker.code_facts(source), tracker.resolve
        classes = tracker.classes(self.provider)
        now = tracker.clock()
        latest: dict[str, AccountStatus] = {rec.account_key: rec for rec in chunk}
        previous = self._previous(latest.keys())  # (a key seen twice: the last one wins)
        updates: list[tuple] = []
        stamps: list[tuple] = []
        inserts: list[tuple] = []
        transitions: dict[tuple[str, str, str, str], int] = defaultdict(int)
        names: dict[str, str] = {}
        delta = ChunkDelta()
        events: list[AccountEvent] = []
        unknown = 0
        for key, rec in latest.items():
            code = rec.code
            facts = facts_of.get(code)
            if facts is None:  # a code met for the first time, or one unknown to the catalog
                if code == STATUS_MISSING:  # drift: the answer lacked the status field
                    self._keep(previous.get(key))
                    continue
                facts = resolve(source, self.provider, code)
                if facts.category == "unknown":
                    unknown += 1
            inst_id, name = rec.institution_id, rec.institution
            if name != inst_id or inst_id not in names:
                names[inst_id] = name
            row = previous.get(key)
            if row is None:
                state, changes = transition(None, rec, facts, now, threshold, emit=emit,
                                            steady=steady)
                if changes:
                    events += changes
                inserts.append((source, key, *state[:STORED_FIELDS]))
                category = state.category
                delta.accounts.append((inst_id, state.code, category, state.fixable))
                if state.flags & OTP:
                    delta.otp.append(inst_id)
                broken, success = state.broken_since, state.success_ts
                if broken is not None:
                    delta.broken.append((category, broken // MINUTE))
                if state.consent_end is not None:
                    delta.consent.append((inst_id, state.consent_end // DAY))
                if success is None:
                    delta.never += 1
                else:
                    delta.success.append(success // MINUTE)
                continue
            row_id = row[0]
            prev = _new_state(AccountState, row[2:] + classes[row[3]])
            state, changes = transition(prev, rec, facts, now, threshold, emit=emit,
                                        steady=steady)
            if changes:
                events += changes
            if row_id <= upto:  # (a row inserted earlier in this sweep is seen anyway)
                bit = 1 << (row_id & 7)
                if not seen[row_id >> 3] & bit:
                    seen[row_id >> 3] |= bit
                    self._seen_count += 1
            if state is prev:  # a re-poll: the same attempt seen again
                continue
            # both sides by name at once (no slices, no attribute reads per record)
            (p_inst, p_code, p_broken, p_streak, p_flags, p_attempt, p_success, p_consent,
             p_category, p_fixable) = prev
            (inst_id, code, broken, streak, flags, attempt, success, consent, category,
             fixable) = state
            if (p_code == code and p_inst == inst_id and p_streak == streak
                    and p_flags == flags and p_broken == broken and p_consent == consent):
                # the usual night: at most the attempt and the success moved (the fields
                # before ``attempt_ts`` are the same)
                if attempt != p_attempt or p_success != success:
                    stamps.append((attempt, success, row_id))
            else:
                updates.append((*state[:STORED_FIELDS], row_id))
                # what the aggregates lose from the old row and gain from the new one
                if p_code != code or p_inst != inst_id:
                    delta.gone_accounts.append((p_inst, p_code, p_category, p_fixable))
                    delta.accounts.append((inst_id, code, category, fixable))
                    if p_category != category:
                        transitions[(self.provider, inst_id, p_category, category)] += 1
                otp, p_otp = flags & OTP, p_flags & OTP
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
                if p_consent != consent or (consent is not None and p_inst != inst_id):
                    if p_consent is not None:
                        delta.gone_consent.append((p_inst, p_consent // DAY))
                    if consent is not None:
                        delta.consent.append((inst_id, consent // DAY))
            if p_success != success:
                if p_success is None:
                    delta.never -= 1
                else:
                    delta.gone_success.append(p_success // MINUTE)
                delta.success.append(success // MINUTE)
        if unknown:
            tracker.note_unknown(source, self.provider, unknown)
        tracker.store.write_chunk(source, updates, stamps, inserts, transitions, names)
        # only once the chunk is committed:
        tracker.fleet(source).apply(delta)
        tracker.written(self, latest.keys())
        self.records += len(latest)
        return events

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
        self.tracker.end(self)
        events = []
        if self._pending:
            chunk, self._pending = self._pending, []
            events = self._apply(chunk)
        if self._sweep or self.tracker.store.staged > self.tracker.batch_size:
            # index the accounts first seen (a pushed re-read leaves a few to the next sweep)
            self.tracker.store.merge_keys()
        if report.complete and self._seen_count < self._stored:
            events += self.tracker.drop_unseen(self, self._seen, self._upto)
        self.tracker.publish_sync(self.source, self.provider)
        return events
