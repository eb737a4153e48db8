"""The repair loop's tables in the state database: episodes, the outbox, baselines, releases.

On the state database's writer connection (schema: :data:`~exporter.state.schema.REMEDIATION`,
created at the loop's construction); every method is blocking and is called on the writer
thread (``await database.write(...)``), or by the ``remediation release`` command in its own
process (SQLite serialises the writers). Each public method is one transaction, so a crash
leaves either all of a step or none of it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from exporter.remediation.episodes import Episode, Mark
from exporter.remediation.renewals import RENEWAL_ID_BASE, ConsentPeriod
from exporter.state.database import FeatureTables, StateDatabase

T = TypeVar("T")

_EPISODE_COLUMNS = (
    "id, source, provider, owner_id, login_id, institution_id, institution, code, category, "
    "opened_at, broken_since, backlog, accounts, any_fixed, request_id, kind, request_category, "
    "requested_at, delivered_at, outcome, closed_at, close_reason, request_code")

_EPISODE_COLUMNS_OF_E = ", ".join(f"e.{c.strip()}" for c in _EPISODE_COLUMNS.split(","))

PENDING, HELD, DELIVERED = "pending", "held", "delivered"

_PERIOD_COLUMNS = (
    "id, source, provider, owner_id, login_id, institution_id, institution, code, category, "
    "end_at, seen_at, accounts, request_id, requested_at, delivered_at, outcome, closed_at")
_PERIOD_COLUMNS_OF_P = ", ".join(f"p.{c.strip()}" for c in _PERIOD_COLUMNS.split(","))


class StoreError(Exception):
    """The database cannot be opened or written (corrupt, read-only, disk full)."""


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: str
    episode_id: int
    source: str
    provider: str
    institution_id: str
    kind: str
    body: str
    created_at: float
    attempts: int
    owner_id: str
    login_id: str


def _episode(row: tuple) -> Episode:
    (id_, source, provider, owner_id, login_id, institution_id, institution, code, category,
     opened_at, broken_since, backlog, accounts, any_fixed, request_id, kind, request_category,
     requested_at, delivered_at, outcome, closed_at, close_reason, request_code) = row
    marks = {k: Mark(*v) for k, v in json.loads(accounts).items()}
    return Episode(source, provider, owner_id, login_id, institution_id, institution, code,
                   category, opened_at, broken_since, bool(backlog), marks, id_, bool(any_fixed),
                   request_id, kind, request_category, requested_at, delivered_at, outcome,
                   closed_at, close_reason, request_code=request_code)


def _period(row: tuple) -> ConsentPeriod:
    (id_, source, provider, owner_id, login_id, institution_id, institution, code, category,
     end_at, seen_at, accounts, request_id, requested_at, delivered_at, outcome, closed_at) = row
    return ConsentPeriod(source, provider, owner_id, login_id, institution_id, institution, code,
                         category, end_at, seen_at, json.loads(accounts), id_, request_id,
                         requested_at, delivered_at, outcome, closed_at)


def _period_episode(p: ConsentPeriod) -> Episode:
    """A consent period as the episode a redirect token names (source, login, open or not)."""
    return Episode(p.source, p.provider, p.owner_id, p.login_id, p.institution_id, p.institution,
                   p.code, p.category, p.seen_at, p.seen_at, False, {}, p.outbox_id,
                   request_id=p.request_id, kind="consent_renewal", closed_at=p.closed_at)


def _mutable(ep: Episode) -> tuple:
    """The columns a folded event may change, in save order."""
    return (ep.institution, ep.code, ep.category, ep.broken_since, _accounts_json(ep),
            int(ep.fixable_now), int(ep.any_fixed), ep.outcome, ep.closed_at, ep.close_reason,
            int(ep.rebroke))


_KEYS_PER_QUERY = 300


def _chunks(keys: list) -> Iterator[list]:
    for i in range(0, len(keys), _KEYS_PER_QUERY):
        yield keys[i:i + _KEYS_PER_QUERY]


def _triples(n: int) -> str:
    return ", ".join(["(?, ?, ?)"] * n)


def _accounts_json(ep: Episode) -> str:
    return json.dumps({k: [m.code, m.category, m.fixable, m.otp] for k, m in ep.accounts.items()},
                      separators=(",", ":"))


class RemediationStore(FeatureTables):
    feature = "remediation"

    def __init__(self, database: StateDatabase):
        super().__init__(database)
        self.path = database.path
        try:
            database.write_sync(lambda: self.db)  # the tables, created on the writer thread
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open the remediation tables ({exc})") from exc

    def _tx(self):
        return _Transaction(self.db)

    # --- episodes -------------------------------------------------------------------------

    def open_episode(self, source: str, owner_id: str, login_id: str) -> Episode | None:
        return self.open_episodes([(source, owner_id, login_id)]).get((source, owner_id, login_id))

    def open_episodes(self, keys: Iterable[tuple[str, str, str]]) -> dict[tuple[str, str, str], Episode]:
        """The open episodes of these logins (source, owner_id, login_id), read in batches."""
        return self._open_by_login(keys, "fix_episodes e", _EPISODE_COLUMNS_OF_E, _episode)

    def _open_by_login(self, keys: Iterable[tuple[str, str, str]], table: str, columns: str,
                       parse: Callable[[tuple], T]) -> dict[tuple[str, str, str], T]:
        """The open rows (``closed_at IS NULL``) of ``table`` (with its alias) for these
        logins, read in batches and parsed; keyed by their ``login``."""
        alias = table.split()[-1]
        out: dict[tuple[str, str, str], T] = {}
        for chunk in _chunks(list(keys)):
            rows = self.db.execute(
                f"WITH k(s, o, l) AS (VALUES {_triples(len(chunk))}) "
                f"SELECT {columns} FROM k JOIN {table} ON {alias}.source = k.s "
                f"AND {alias}.owner_id = k.o AND {alias}.login_id = k.l "
                f"AND {alias}.closed_at IS NULL",
                [v for key in chunk for v in key]).fetchall()
            for row in rows:
                item = parse(row)
                out[item.login] = item  # type: ignore[attr-defined]
        return out

    def last_fixed(self, keys: Iterable[tuple[str, str, str]]
                   ) -> dict[tuple[str, str, str], tuple[int, float, str]]:
        """Per login, its latest episode closed ``fixed`` with a delivered request and no
        ``rebroke`` counted yet: (id, closed_at, provider)."""
        out: dict[tuple[str, str, str], tuple[int, float, str]] = {}
        for chunk in _chunks(list(keys)):
            rows = self.db.execute(
                f"WITH k(s, o, l) AS (VALUES {_triples(len(chunk))}) "
                "SELECT e.source, e.owner_id, e.login_id, e.id, e.closed_at, e.provider FROM k "
                "JOIN fix_episodes e ON e.source = k.s AND e.owner_id = k.o AND e.login_id = k.l "
                "AND e.close_reason = 'fixed' AND e.delivered_at IS NOT NULL AND e.rebroke = 0 "
                "ORDER BY e.closed_at", [v for key in chunk for v in key]).fetchall()
            for source, owner, login, id_, closed_at, provider in rows:
                out[(source, owner, login)] = (id_, closed_at, provider)  # the latest wins
        return out

    def episode_of_account(self, source: str, account_key: str) -> Episode | None:
        """The open episode that holds this account (REMOVED events carry no login id)."""
        row = self.db.execute(
            "SELECT episode_id FROM fix_episode_accounts WHERE source = ? AND account_key = ?",
            (source, account_key)).fetchone()
        return self.episode(row[0]) if row else None

    def episode(self, episode_id: int) -> Episode | None:
        """The episode (or consent period, by its outbox id) a redirect token names."""
        if episode_id >= RENEWAL_ID_BASE:
            period = self.period(episode_id - RENEWAL_ID_BASE)
            return _period_episode(period) if period is not None else None
        row = self.db.execute(f"SELECT {_EPISODE_COLUMNS} FROM fix_episodes WHERE id = ?",
                              (episode_id,)).fetchone()
        return _episode(row) if row else None

    def save_episodes(self, episodes: list[Episode], rebroke_ids: list[int],
                      cancel_ids: list[str], now: float) -> None:
        """Write a batch of folded events in one short transaction: new episodes get their id;
        requests of closed episodes that were not delivered yet are cancelled."""
        fresh = [ep for ep in episodes if ep.id is None]
        known = [ep for ep in episodes if ep.id is not None]
        with self._tx():
            next_id = self.db.execute("SELECT coalesce(max(id), 0) + 1 FROM fix_episodes"
                                      ).fetchone()[0]
            for i, ep in enumerate(fresh):
                ep.id = next_id + i
            # Updates first: an episode closed in this batch frees its login for a new one.
            self.db.executemany(
                "UPDATE fix_episodes SET institution = ?, code = ?, category = ?, "
                "broken_since = ?, accounts = ?, fixable = ?, any_fixed = ?, outcome = ?, "
                "closed_at = ?, close_reason = ?, rebroke = ? WHERE id = ?",
                [(*_mutable(ep), ep.id) for ep in known])
            self.db.executemany(
                "INSERT INTO fix_episodes (institution, code, category, broken_since, accounts, "
                "fixable, any_fixed, outcome, closed_at, close_reason, rebroke, id, source, "
                "provider, owner_id, login_id, institution_id, opened_at, backlog) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(*_mutable(ep), ep.id, ep.source, ep.provider, ep.owner_id, ep.login_id,
                  ep.institution_id, ep.opened_at, int(ep.backlog)) for ep in fresh])
            self.db.executemany("DELETE FROM fix_episode_accounts WHERE episode_id = ?",
                                [(ep.id,) for ep in known])
            self.db.executemany(
                "INSERT OR REPLACE INTO fix_episode_accounts VALUES (?, ?, ?)",
                [(ep.source, key, ep.id) for ep in episodes if ep.closed_at is None
                 for key in ep.accounts])
            self.db.executemany("UPDATE fix_episodes SET rebroke = 1 WHERE id = ?",
                                [(i,) for i in rebroke_ids])
            self.db.executemany(
                "UPDATE fix_outbox SET state = 'cancelled', finished_at = ? "
                "WHERE id = ? AND state IN ('pending', 'held')", [(now, r) for r in cancel_ids])

    def waiting_episodes(self, backfill: bool, batch: int = 5000) -> Iterator[Episode]:
        """Open, fixable episodes without a request, oldest first, read in batches."""
        backlog = "" if backfill else "AND backlog = 0"
        after = 0
        while True:
            rows = self.db.execute(
                f"SELECT {_EPISODE_COLUMNS} FROM fix_episodes WHERE closed_at IS NULL "
                f"AND request_id IS NULL AND fixable = 1 {backlog} AND id > ? ORDER BY id "
                "LIMIT ?", (after, batch)).fetchall()
            yield from (_episode(r) for r in rows)
            if len(rows) < batch:
                return
            after = rows[-1][0]

    def abandon_candidates(self, requested_before: float) -> list[Episode]:
        rows = self.db.execute(
            f"SELECT {_EPISODE_COLUMNS} FROM fix_episodes WHERE closed_at IS NULL "
            "AND outcome IS NULL AND delivered_at IS NOT NULL AND requested_at <= ?",
            (requested_before,)).fetchall()
        return [_episode(r) for r in rows]

    def set_outcomes(self, episode_ids: list[int], outcome: str) -> None:
        with self._tx():
            self.db.executemany("UPDATE fix_episodes SET outcome = ? WHERE id = ?",
                                [(outcome, i) for i in episode_ids])

    # --- consent periods ------------------------------------------------------------------

    def period(self, period_id: int) -> ConsentPeriod | None:
        row = self.db.execute(f"SELECT {_PERIOD_COLUMNS} FROM consent_periods WHERE id = ?",
                              (period_id,)).fetchone()
        return _period(row) if row else None

    def open_periods(self, keys: Iterable[tuple[str, str, str]]
                     ) -> dict[tuple[str, str, str], ConsentPeriod]:
        """The open consent periods of these logins (source, owner_id, login_id)."""
        return self._open_by_login(keys, "consent_periods p", _PERIOD_COLUMNS_OF_P, _period)

    def save_periods(self, periods: list[ConsentPeriod], now: float) -> None:
        """Write folded consent periods (closed ones first, so their login is free for the
        new period), cancelling the requests of closed ones not delivered yet."""
        closed = [p for p in periods if p.closed_at is not None]
        with self._tx():
            for p in sorted(periods, key=lambda p: p.closed_at is None):
                values = (p.institution, p.code, p.category, p.end, json.dumps(
                    p.accounts, separators=(",", ":")), p.outcome, p.closed_at)
                if p.id is None:
                    p.id = self.db.execute(
                        "INSERT INTO consent_periods (institution, code, category, end_at, "
                        "accounts, outcome, closed_at, source, provider, owner_id, login_id, "
                        "institution_id, seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*values, p.source, p.provider, p.owner_id, p.login_id,
                         p.institution_id, p.seen_at)).lastrowid
                else:
                    self.db.execute(
                        "UPDATE consent_periods SET institution = ?, code = ?, category = ?, "
                        "end_at = ?, accounts = ?, outcome = ?, closed_at = ? WHERE id = ?",
                        (*values, p.id))
            self.db.executemany(
                "UPDATE fix_outbox SET state = 'cancelled', finished_at = ? "
                "WHERE id = ? AND state IN ('pending', 'held')",
                [(now, p.request_id) for p in closed if p.request_id is not None])

    def due_periods(self, upto_end: float, batch: int = 5000) -> Iterator[ConsentPeriod]:
        """Open consent periods without a request whose end is at or before ``upto_end``."""
        after = -1.0
        while True:
            rows = self.db.execute(
                f"SELECT {_PERIOD_COLUMNS} FROM consent_periods WHERE closed_at IS NULL "
                "AND request_id IS NULL AND end_at <= ? AND end_at > ? ORDER BY end_at, id "
                "LIMIT ?", (upto_end, after, batch)).fetchall()
            yield from (_period(r) for r in rows)
            if len(rows) < batch:
                return
            after = rows[-1][9]

    def close_expired(self, ids: list[int], now: float) -> None:
        """Consent periods whose end passed without a request (the login breaks with 947 and
        gets a fix request instead)."""
        with self._tx():
            self.db.executemany("UPDATE consent_periods SET closed_at = ? WHERE id = ?",
                                [(now, i) for i in ids])

    def add_renewals(self, requests: list[tuple[ConsentPeriod, str, str, bool]],
                     now: float) -> None:
        """(period, request id, body, held) each: outbox rows and period marks, one
        transaction."""
        with self._tx():
            self.db.executemany(
                "INSERT INTO fix_outbox (id, episode_id, source, provider, institution_id, "
                "institution, kind, backlog, was_held, body, state, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?, 'consent_renewal', 0, ?, ?, ?, ?, ?)",
                [(rid, p.outbox_id, p.source, p.provider, p.institution_id, p.institution,
                  int(held), body, HELD if held else PENDING, now, now)
                 for p, rid, body, held in requests])
            self.db.executemany(
                "UPDATE consent_periods SET request_id = ?, requested_at = ? WHERE id = ?",
                [(rid, now, p.id) for p, rid, _, _ in requests])
        for p, rid, _, _ in requests:
            p.request_id, p.requested_at = rid, now

    # --- baselines and releases -----------------------------------------------------------

    def baselines(self) -> dict[str, float]:
        return dict(self.db.execute("SELECT source, done_at FROM fix_baselines").fetchall())

    def mark_baseline(self, source: str, at: float) -> None:
        self.db.execute("INSERT OR IGNORE INTO fix_baselines VALUES (?, ?)", (source, at))

    def release(self, source: str, institution_id: str | None, now: float) -> int:
        """Send the held requests of one institution (or of every institution of ``source``);
        the storm guard counts that institution afresh from now."""
        with self._tx():
            where, args = "state = 'held' AND source = ?", [source]
            if institution_id is not None:
                where += " AND institution_id = ?"
                args.append(institution_id)
            institutions = [r[0] for r in self.db.execute(
                f"SELECT DISTINCT institution_id FROM fix_outbox WHERE {where}", args)]
            if institution_id is not None and institution_id not in institutions:
                institutions.append(institution_id)
            self.db.executemany("INSERT OR REPLACE INTO fix_releases VALUES (?, ?, ?)",
                                [(source, i, now) for i in institutions])
            cur = self.db.execute(
                f"UPDATE fix_outbox SET state = 'pending', next_attempt_at = ? WHERE {where}",
                [now, *args])
            return cur.rowcount

    # --- outbox ---------------------------------------------------------------------------

    def storm_count(self, source: str, institution_id: str, now: float, window: float) -> int:
        """Requests (not held, not backlog) created at the institution in the window, which
        starts no earlier than the institution's last release."""
        row = self.db.execute(
            "SELECT released_at FROM fix_releases WHERE source = ? AND institution_id = ?",
            (source, institution_id)).fetchone()
        return self.db.execute(
            "SELECT count(*) FROM fix_outbox WHERE source = ? AND institution_id = ? "
            "AND created_at > ? AND created_at >= ? AND backlog = 0 AND was_held = 0",
            (source, institution_id, now - window, row[0] if row else 0.0)).fetchone()[0]

    def backfill_count(self, source: str, since: float) -> int:
        return self.db.execute(
            "SELECT count(*) FROM fix_outbox WHERE source = ? AND backlog = 1 AND created_at > ?",
            (source, since)).fetchone()[0]

    def add_requests(self, requests: list[tuple[Episode, str, str, str, bool]], now: float) -> None:
        """(episode, request id, kind, body, held) each: outbox rows and episode marks, one
        transaction."""
        with self._tx():
            self.db.executemany(
                "INSERT INTO fix_outbox (id, episode_id, source, provider, institution_id, "
                "institution, kind, backlog, was_held, body, state, created_at, next_attempt_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(rid, ep.id, ep.source, ep.provider, ep.institution_id, ep.institution, kind,
                  int(ep.backlog), int(held), body, HELD if held else PENDING, now, now)
                 for ep, rid, kind, body, held in requests])
            self.db.executemany(
                "UPDATE fix_episodes SET request_id = ?, kind = ?, request_category = ?, "
                "request_code = ?, requested_at = ? WHERE id = ?",
                [(rid, kind, ep.category, ep.code, now, ep.id)
                 for ep, rid, kind, _, _ in requests])
        for ep, rid, kind, _, _ in requests:
            ep.request_id, ep.kind, ep.requested_at = rid, kind, now
            ep.request_category, ep.request_code = ep.category, ep.code

    def due(self, now: float, limit: int, skip: Iterable[str] = ()) -> list[OutboxRow]:
        skip = set(skip)
        rows = self.db.execute(
            "SELECT o.id, o.episode_id, o.source, o.provider, o.institution_id, o.kind, o.body, "
            "o.created_at, o.attempts, coalesce(e.owner_id, p.owner_id), "
            "coalesce(e.login_id, p.login_id) FROM fix_outbox o "
            "LEFT JOIN fix_episodes e ON e.id = o.episode_id "
            f"LEFT JOIN consent_periods p ON p.id = o.episode_id - {RENEWAL_ID_BASE} "
            "WHERE o.state = 'pending' AND o.next_attempt_at <= ? "
            "AND coalesce(e.id, p.id) IS NOT NULL ORDER BY o.next_attempt_at LIMIT ?",
            (now, limit + len(skip))).fetchall()
        return [OutboxRow(*r) for r in rows if r[0] not in skip][:limit]

    def next_due(self) -> float | None:
        row = self.db.execute(
            "SELECT min(next_attempt_at) FROM fix_outbox WHERE state = 'pending'").fetchone()
        return row[0]

    def settle(self, settled: list) -> set[str]:
        """Write back a batch of attempts (``delivery.Settlement``) in one transaction;
        returns the ids newly marked delivered (a row cancelled meanwhile is not).

        Set-wise: one statement per kind of outcome (a burst settles hundreds at a time)."""
        retried = [(s.at, s.error, s.row.id) for s in settled if s.result == "retried"]
        finished = [s for s in settled if s.result != "retried"]
        still: set[str] = set()
        with self._tx():
            if retried:
                self.db.executemany(
                    "UPDATE fix_outbox SET attempts = attempts + 1, next_attempt_at = ?, "
                    "last_error = ? WHERE id = ? AND state = 'pending'", retried)
            for chunk in _chunks([s.row.id for s in finished]):
                still.update(r[0] for r in self.db.execute(
                    f"SELECT id FROM fix_outbox WHERE state = 'pending' AND id IN "
                    f"({','.join('?' * len(chunk))})", chunk))
            pending = [s for s in finished if s.row.id in still]
            delivered = {s.row.id for s in pending if s.result == DELIVERED}
            # A delivered body served its purpose; the episode keeps what outcomes need.
            self.db.executemany(
                "UPDATE fix_outbox SET state = ?, attempts = attempts + 1, finished_at = ?, "
                "last_error = ?, body = CASE WHEN ? THEN '' ELSE body END WHERE id = ?",
                [(s.result, s.at, s.error or None, s.result == DELIVERED, s.row.id)
                 for s in pending])
            self.db.executemany(
                "UPDATE fix_episodes SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                [(s.at, s.row.episode_id) for s in pending if s.result == DELIVERED
                 and s.row.episode_id < RENEWAL_ID_BASE])
            self.db.executemany(
                "UPDATE consent_periods SET delivered_at = ? WHERE id = ? AND delivered_at IS NULL",
                [(s.at, s.row.episode_id - RENEWAL_ID_BASE) for s in pending
                 if s.result == DELIVERED and s.row.episode_id >= RENEWAL_ID_BASE])
        return delivered

    def pending_counts(self) -> dict[str, int]:
        return dict(self.db.execute(
            "SELECT source, count(*) FROM fix_outbox WHERE state = 'pending' GROUP BY source"))

    def held_counts(self) -> dict[tuple[str, str, str], int]:
        rows = self.db.execute(
            "SELECT source, institution_id, max(institution), count(*) FROM fix_outbox "
            "WHERE state = 'held' GROUP BY source, institution_id")
        return {(s, i, n): c for s, i, n, c in rows}

    def held_list(self) -> list[tuple[str, str, str, int]]:
        return [(*k, n) for k, n in sorted(self.held_counts().items())]

    def outbox_states(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT state, count(*) FROM fix_outbox GROUP BY state"))

    def prune(self, closed_before: float) -> int:
        """Forget closed episodes and consent periods (and their outbox rows) past the
        rebroke window."""
        with self._tx():
            self.db.execute(
                "DELETE FROM fix_outbox WHERE episode_id IN (SELECT id + ? FROM consent_periods "
                "WHERE closed_at IS NOT NULL AND closed_at < ?)", (RENEWAL_ID_BASE, closed_before))
            self.db.execute("DELETE FROM consent_periods WHERE closed_at IS NOT NULL "
                            "AND closed_at < ?", (closed_before,))
            self.db.execute(
                "DELETE FROM fix_outbox WHERE episode_id IN (SELECT id FROM fix_episodes "
                "WHERE closed_at IS NOT NULL AND closed_at < ?)", (closed_before,))
            return self.db.execute(
                "DELETE FROM fix_episodes WHERE closed_at IS NOT NULL AND closed_at < ?",
                (closed_before,)).rowcount


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``, rolled back on an exception; nests as a no-op."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.outer = False

    def __enter__(self):
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outer = True
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.outer:
            return False
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
        return False
