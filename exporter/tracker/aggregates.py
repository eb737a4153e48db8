"""A source's aggregates: label sets and per-minute age histograms, moved chunk by chunk.

Each source's aggregates (accounts per label set, ages per minute) live in a
:class:`FleetState` that every committed chunk updates by the difference between the old
and new rows (a :class:`ChunkDelta`), so finishing a sweep costs a step per series, not per
account; at start-up they are rebuilt from the state database. A :class:`Snapshot` of all
sources is what the collectors read; it is replaced whole, never mutated.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.tracker.transition import AccountState

from exporter.state.accounts import DAY, MINUTE, Contributions
from exporter.tracker.transition import OTP

OTHER = "other"
CONSENT_WINDOWS = (("7d", 7 * DAY), ("30d", 30 * DAY), ("90d", 90 * DAY))
"""``within`` of ``openfinance_consent_expiring_accounts``: cumulative windows from now."""

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
class ConsentHorizon:
    """One institution's consent ends counted per day, ascending, for the expiring counts
    at scrape time (ends change only with sweeps; "within 7 days" moves with the clock)."""

    days: array
    """distinct day starts (epoch seconds), ascending"""
    cumulative: array
    """accounts whose consent ends on or before ``days[i]``'s day"""

    @classmethod
    def of(cls, per_day: dict[float, int]) -> ConsentHorizon:
        days, cumulative, running = array("d"), array("q"), 0
        for day in sorted(per_day):
            running += per_day[day]
            days.append(day * DAY)
            cumulative.append(running)
        return cls(days, cumulative)

    def _upto(self, ts: float) -> int:
        i = bisect_right(self.days, ts)
        return self.cumulative[i - 1] if i else 0

    def expiring(self, now: float, within: float) -> int:
        """Accounts whose consent ends in [now, now + within], to the day: an end counts
        by its day, so each edge of a window errs by under a day."""
        return self._upto(now + within) - self._upto(now - DAY)


@dataclass(frozen=True, slots=True)
class SourceAggregate:
    """Everything the collector shows for one source, computed once per sweep. Each tuple of
    rows is sorted (institution first): /metrics finds an institution's rows by bisection."""

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
    consent: tuple[tuple[str, str, ConsentHorizon], ...] = ()
    """(institution_id, institution, consent ends): institutions (folded like the others)
    with accounts whose consent expires"""


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
        "consent",
        "gone_accounts",
        "gone_broken",
        "gone_consent",
        "gone_otp",
        "gone_success",
        "moved",
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
        self.consent: list[tuple[str, float]] = []
        self.gone_consent: list[tuple[str, float]] = []
        self.never = 0
        self.moved: list[tuple[str, str, str]] = []
        """(institution_id, from_category, to_category) of each change of category"""

    def count(self, prev: AccountState | None, state: AccountState) -> None:
        """Count one account's move from ``prev`` (None: a new account) to ``state``: the
        keys its old state counted under go, those its new one counts under come. Only keys
        that differ are appended (the usual night moves the success time alone)."""
        (inst, code, broken, streak, flags, _attempt, success, consent, category,
         fixable) = state
        if prev is None:
            self.accounts.append((inst, code, category, fixable))
            if flags & OTP:
                self.otp.append(inst)
            if broken is not None:
                self.broken.append((category, broken // MINUTE))
            if consent is not None:
                self.consent.append((inst, consent // DAY))
            if success is None:
                self.never += 1
            else:
                self.success.append(success // MINUTE)
            return
        (p_inst, p_code, p_broken, p_streak, p_flags, _p_attempt, p_success, p_consent,
         p_category, p_fixable) = prev
        if p_success != success:
            if p_success is None:
                self.never -= 1
            else:
                self.gone_success.append(p_success // MINUTE)
            self.success.append(success // MINUTE)
        if (p_code == code and p_inst == inst and p_streak == streak and p_flags == flags
                and p_broken == broken and p_consent == consent):
            return  # the usual night: the success alone moved
        if p_code != code or p_inst != inst:
            self.gone_accounts.append((p_inst, p_code, p_category, p_fixable))
            self.accounts.append((inst, code, category, fixable))
            if p_category != category:
                self.moved.append((inst, p_category, category))
        otp, p_otp = flags & OTP, p_flags & OTP
        if p_otp != otp or (otp and p_inst != inst):
            if p_otp:
                self.gone_otp.append(p_inst)
            if otp:
                self.otp.append(inst)
        if p_broken != broken or p_category != category:
            if p_broken is not None:
                self.gone_broken.append((p_category, p_broken // MINUTE))
            if broken is not None:
                self.broken.append((category, broken // MINUTE))
        if p_consent != consent or (consent is not None and p_inst != inst):
            if p_consent is not None:
                self.gone_consent.append((p_inst, p_consent // DAY))
            if consent is not None:
                self.consent.append((inst, consent // DAY))


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
        self.consent: Counter[tuple[str, float]] = Counter()
        """(institution_id, day of the consent end) → accounts"""
        self.never = 0

    def merge(self, rows: Contributions, classify: Callable[[str], tuple[str, int]],
              sign: int = 1) -> None:
        """Add (``sign=1``) or remove (``-1``) what a set of stored rows contributes;
        ``classify`` gives a stored code's (category, fixable)."""
        for inst, code, flags, n in rows.accounts:
            _move(self.accounts, (inst, code, *classify(code)), sign * n)
            if flags & OTP:
                _move(self.otp, inst, sign * n)
        for code, minute, n in rows.broken:
            _move(self.broken, (classify(code)[0], float(minute)), sign * n)
        for minute, n in rows.success:
            _move(self.success, float(minute), sign * n)
        for inst, day, n in rows.consent:
            _move(self.consent, (inst, float(day)), sign * n)
        self.never += sign * rows.never_succeeded

    def total(self) -> int:
        """Accounts stored for the source."""
        return sum(self.accounts.values())

    def apply(self, delta: ChunkDelta) -> None:
        _shift(self.accounts, delta.accounts, delta.gone_accounts)
        _shift(self.otp, delta.otp, delta.gone_otp)
        _shift(self.broken, delta.broken, delta.gone_broken)
        _shift(self.success, delta.success, delta.gone_success)
        if delta.consent or delta.gone_consent:
            _shift(self.consent, delta.consent, delta.gone_consent)
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
        consent: dict[tuple[str, str], dict[float, int]] = defaultdict(lambda: defaultdict(int))
        for (inst_id, day), n in self.consent.items():
            consent[label(inst_id)][day] += n
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
            consent=tuple((*k, ConsentHorizon.of(d)) for k, d in sorted(consent.items())),
        )


