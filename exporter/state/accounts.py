"""Per-account state in SQLite (WAL), so streaks, broken-since and last success, transition
counts and the aggregates built from them survive a restart.

The store holds no per-account data in Python memory: a sweep reads the previous rows of
the chunk it is applying and writes the new ones back in one transaction per chunk. The
aggregates the tracker keeps in memory are derived data: :func:`read_contributions` rebuilds
them from the rows (at start-up, and for the rows a complete sweep drops).

Layout: accounts live in a rowid table numbered in the order they were first seen; the key
index ``account_keys`` maps ``(source, account_key)`` to that id. Sweeps revisit accounts in
about the order they page through them every night, so a chunk's updates land on
neighbouring pages whatever the keys look like (MX member guids are random). First
sightings are appended by id only and found meanwhile through an in-memory hash lookup;
the sweep's end merges them into the key index in key order (one pass over its pages
instead of a random insert per key per batch).
"""

from __future__ import annotations

import logging
import sqlite3
from array import array
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from typing import NamedTuple

import orjson

from exporter.state.database import StateDatabase
from exporter.state.schema import _SCHEMA_2_FLAGS, SCHEMA_VERSION  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


_STATE_COLUMNS = ("institution_id", "code", "broken_since", "mfa_streak", "flags",
                  "attempt_ts", "success_ts", "consent_end")
"""The stored state of an account, in this order: what :meth:`StateStore.write_chunk`
takes and, after ``(id, account_key)``, what :meth:`StateStore.load_accounts` and
:meth:`StateStore.rows_after` return (the order of the tracker's ``AccountState``, so a
row becomes a state by slicing)."""
_LOAD = (
    "SELECT a.id, a.account_key, " + ", ".join(f"a.{c}" for c in _STATE_COLUMNS)
    # the chunk's keys drive the loop (CROSS JOIN keeps that order): a probe of the key
    # index each, then the rows, which sit in about the order the sweep asks for them
    + " FROM json_each(?) AS k CROSS JOIN account_keys AS x CROSS JOIN accounts AS a "
    "WHERE x.source = ? AND x.account_key = k.value AND a.id = x.id"
)
_LOAD_IDS = (
    "SELECT a.id, a.account_key, " + ", ".join(f"a.{c}" for c in _STATE_COLUMNS)
    + " FROM json_each(?) AS k CROSS JOIN accounts AS a WHERE a.id = k.value AND a.source = ?"
)
_MERGE = (
    "INSERT INTO account_keys (source, account_key, id) SELECT source, account_key, id "
    "FROM accounts WHERE id > (SELECT upto FROM keys_merged) ORDER BY 1, 2"
)
STAGE_LIMIT = 1 << 20
"""First sightings kept out of the key index at most (16 to 32 bytes of memory each)."""
_AHEAD = (
    "SELECT id, account_key, " + ", ".join(_STATE_COLUMNS)
    + " FROM accounts NOT INDEXED WHERE id > ? AND id <= ? AND source = ? ORDER BY id LIMIT ?"
)
# Whole-source reads walk the table in row order: through the key index they would visit
# the rows in key order, which for random keys (MX guids) means random pages.
_SCAN = "accounts NOT INDEXED"
_UPDATE = (
    "UPDATE accounts SET " + ", ".join(f"{c} = ?" for c in _STATE_COLUMNS) + " WHERE id = ?"
)
_INSERT = (
    f"INSERT INTO accounts (source, account_key, {', '.join(_STATE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * (2 + len(_STATE_COLUMNS)))})"
)
"""a first sighting: its id is the next rowid (one above the highest), not bound per row"""
_INSERT_AT = _INSERT.replace("(source,", "(id, source,").replace("VALUES (", "VALUES (?, ")


class StateStore:
    """The tracker's tables (schema: :mod:`exporter.state.schema`, version
    :data:`SCHEMA_VERSION`) on the state database's writer connection; every method runs on
    its one writer thread (``Tracker.run``)."""

    def __init__(self, database: StateDatabase):
        self.database = database
        self.path = database.path
        self._staging = _Staging()
        """the rows first seen since the last merge of the key index"""
        self._indexed: dict[str, bool] = {}
        """source → whether the key index holds any of its keys (learnt on first use)"""
        self._db = database.write_sync(self._open)

    def _open(self) -> sqlite3.Connection:
        """On the writer thread: the connection (tables migrated), and the merge of first
        sightings of a run that ended before its merge."""
        self._db = db = self.database.connection
        if db.execute("SELECT 1 FROM accounts WHERE id > (SELECT upto FROM keys_merged) "
                      "LIMIT 1").fetchone():
            self.merge_keys()
        return db

    def merge_keys(self) -> None:
        """Merge the rows first seen since the last merge into the key index, in key order
        (each index page is written once, however random the keys), in one transaction."""
        with self.transaction() as db:
            self._merge(db)
        self._staging = _Staging()  # hands its memory back

    def _merge(self, db: sqlite3.Connection) -> None:
        self._indexed.clear()
        db.execute(_MERGE)
        db.execute("UPDATE keys_merged SET upto = (SELECT coalesce(max(id), 0) FROM accounts)")

    def _restage(self) -> None:
        """After a failed write: the staging lookup again holds exactly the committed rows
        that wait for the merge (entries of the rolled back chunk would only cost a merge:
        a lookup checks the key of the row it finds)."""
        staging = _Staging()
        try:
            for first_id, key in self._db.execute(
                    "SELECT id, account_key FROM accounts WHERE id > (SELECT upto FROM "
                    "keys_merged) ORDER BY id"):
                if not staging.add((key,), first_id):
                    self.merge_keys()
                    return
        except sqlite3.Error as exc:
            log.warning("state staging lookup not rebuilt path=%s error=%s", self.path, exc)
            return
        self._staging = staging

    @property
    def staged(self) -> int:
        """Rows first seen since the last merge of the key index."""
        return len(self._staging)

    @property
    def connection(self) -> sqlite3.Connection:
        """The writer connection (for reads that must see its own writes)."""
        return self._db

    def close(self) -> None:
        """Close the state database (checkpointed; tests and tools: the agent closes its
        database itself)."""
        self.database.close_sync()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def last_id(self) -> int:
        """The highest account id so far: rows above it were first seen after this call."""
        return self._db.execute("SELECT coalesce(max(id), 0) FROM accounts").fetchone()[0]

    def load_accounts(self, source: str, keys: list[str]) -> dict[str, tuple]:
        """The stored rows of ``keys`` (unique), as ``key → (id, key, *_STATE_COLUMNS)``.

        The keys travel as one JSON array joined in SQLite, in key order (the index's
        pages in turn): one bound parameter, no host-parameter limit, no per-key statement.
        A source none of whose keys is indexed yet (its first sweep) skips the index.
        """
        indexed = self._indexed.get(source)
        if indexed is None:
            indexed = self._indexed[source] = self._db.execute(
                "SELECT 1 FROM account_keys WHERE source = ? LIMIT 1", (source,)).fetchone() is not None
        found = {row[1]: row for row in self._db.execute(
            _LOAD, (_json(sorted(keys)), source))} if indexed else {}
        if self._staging and len(found) < len(keys):  # first seen since the last merge
            staged = self._staging.find(k for k in keys if k not in found)
            if staged:
                for row in self._db.execute(_LOAD_IDS, (_json(list(staged.values())), source)):
                    if staged.get(row[1]) == row[0]:  # (not another key of the same hash)
                        found[row[1]] = row
        return found

    def rows_after(self, source: str, after_id: int, upto: int, limit: int) -> list[tuple]:
        """Up to ``limit`` rows of ``source`` with ids in (``after_id``, ``upto``], in id
        order (a range of the table itself: no index, neighbouring pages)."""
        return self._db.execute(_AHEAD, (after_id, upto, source, limit)).fetchall()

    def write_chunk(
        self,
        source: str,
        updates: list[tuple],
        stamps: list[tuple],
        inserts: list[tuple],
        transitions: dict[tuple[str, str, str, str], int],
        institutions: dict[str, str],
    ) -> None:
        """Write a chunk of accounts, add transition counts and names, in one transaction.

        ``updates`` are ``(*_STATE_COLUMNS, id)`` for stored accounts whose state changed,
        ``stamps`` ``(attempt_ts, success_ts, id)`` for those where only these two moved
        (the usual night: a narrower statement), ``inserts`` ``(source, account_key,
        *state columns)`` for first sightings (in the order they were seen: ids follow it).

        First sightings get the next ids and stay out of the key index until
        :meth:`merge_keys` (found meanwhile through the in-memory staging lookup), unless
        more than :data:`STAGE_LIMIT` wait: then they are merged in this transaction.
        """
        try:
            self._write_chunk(source, updates, stamps, inserts, transitions, institutions)
        except BaseException:
            if inserts:
                self._restage()
            raise

    def _write_chunk(self, source: str, updates: list[tuple], stamps: list[tuple],
                     inserts: list[tuple], transitions: dict[tuple[str, str, str, str], int],
                     institutions: dict[str, str]) -> None:
        merge = False
        with self.transaction() as db:
            db.executemany(_UPDATE, updates)
            db.executemany("UPDATE accounts SET attempt_ts = ?, success_ts = ? WHERE id = ?",
                           stamps)
            if inserts:
                top, merged = db.execute("SELECT coalesce(max(id), 0), (SELECT upto FROM "
                                         "keys_merged) FROM accounts").fetchone()
                base = max(top, merged)
                if merged > top:  # ids above every merged one (a deleted tail's ids are not
                    # reused below it): the first row placed, the others follow it
                    db.execute(_INSERT_AT, (base + 1, *inserts[0]))
                    db.executemany(_INSERT, inserts[1:])
                else:
                    db.executemany(_INSERT, inserts)
                last = base + len(inserts)
                if db.execute("SELECT max(id) FROM accounts").fetchone()[0] != last:
                    raise sqlite3.DatabaseError("first sightings not numbered in a row")
                ids = range(base + 1, last + 1)
                keys = [row[1] for row in inserts]
                if not self._staging and self._appends(db, source, keys):
                    # increasing keys above the index's last (numeric ids): appended to the
                    # key index at once, which costs no more than staging them
                    db.execute("INSERT INTO account_keys (source, account_key, id) SELECT "
                               "source, account_key, id FROM accounts WHERE id > ?", (base,))
                    db.execute("UPDATE keys_merged SET upto = ?", (ids[-1],))
                    self._indexed.pop(source, None)
                else:
                    # two keys of one hash, or too many waiting: index them all now
                    merge = (not self._staging.add(keys, base + 1)
                             or len(self._staging) > STAGE_LIMIT)
            db.executemany(
                "INSERT INTO transitions (source, provider, institution_id, from_category, "
                "to_category, count) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                "count = count + excluded.count",
                ((source, *k, n) for k, n in transitions.items()),
            )
            # A real display name replaces what is stored; a fallback to the id never
            # overwrites a name learnt earlier (an institution lookup may fail once).
            db.executemany(
                "INSERT INTO institutions (source, institution_id, name) VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET name = excluded.name "
                "WHERE excluded.name <> excluded.institution_id",
                ((source, i, n) for i, n in institutions.items()),
            )
            if merge:
                self._merge(db)
        if merge:
            self._staging = _Staging()

    @staticmethod
    def _appends(db: sqlite3.Connection, source: str, keys: list[str]) -> bool:
        """Whether ``keys`` (in arrival order) increase and all sort after the key index's
        last key of ``source``: then inserting them only appends to the index."""
        if keys != sorted(keys):  # (unique keys: sorted means increasing)
            return False
        top = db.execute("SELECT max(account_key) FROM account_keys WHERE source = ?",
                         (source,)).fetchone()[0]
        return top is None or keys[0] > top

    def drop_unseen(self, source: str, seen: bytearray, upto: int, *,
                    rows: bool = False) -> tuple[Contributions, list[tuple]] | None:
        """Delete the accounts of ``source`` with an id up to ``upto`` whose bit is not set
        in ``seen``: a complete sweep did not see them, they are gone upstream. Returns what
        they contributed to the aggregates (read in the same transaction) and, with
        ``rows``, their ``(account_key, institution_id, code, broken_since, flags)``; or None.

        A sweep marks the rows it reads in a bitmap (an eighth of a byte per account)
        instead of writing every row it sees, so a re-poll that changes nothing writes
        nothing; rows first seen during the sweep have ids above ``upto``.
        """
        with self.transaction() as db:
            gone = [i for (i,) in db.execute(
                "SELECT id FROM accounts NOT INDEXED WHERE source=? AND id<=?", (source, upto))
                if not seen[i >> 3] & (1 << (i & 7))]
            if not gone:
                return None
            ids = _json(gone)
            contributions = read_contributions(db, source, ids=ids)
            dropped = db.execute(
                "SELECT account_key, institution_id, code, broken_since, flags FROM accounts "
                "WHERE id IN (SELECT value FROM json_each(?))", (ids,)).fetchall() if rows else []
            db.execute("DELETE FROM accounts WHERE id IN (SELECT value FROM json_each(?))",
                       (ids,))
        return contributions, dropped

    def labels(self, source: str) -> tuple[dict[str, str], list[tuple[str, str, str, str, int]]]:
        """Institution names and transition counts of one source (both small tables)."""
        names = dict(self._db.execute(
            "SELECT institution_id, name FROM institutions WHERE source=?", (source,)))
        transitions = self._db.execute(
            "SELECT provider, institution_id, from_category, to_category, count "
            "FROM transitions WHERE source=?", (source,)).fetchall()
        return names, transitions


def _json(values: list) -> str:
    return orjson.dumps(values).decode()


class _Staging:
    """An in-memory lookup of the rows not merged into the key index yet: their key's hash
    (this process's ``hash()``: the lookup never outlives it) → id, one hash per row.

    Open addressing over two arrays of machine integers (16 bytes a slot, at most half of
    the slots used): no Python object per entry, and no B-tree insert per first sighting.
    """

    __slots__ = ("_count", "_hashes", "_ids", "_mask")

    def __init__(self) -> None:
        self._hashes = self._ids = array("q")
        self._mask = -1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, keys: Iterable[str], first_id: int) -> bool:
        """Enter ``keys`` with the ids from ``first_id`` on; False if a key's hash was taken
        (that key is not entered, the others are: the caller merges them all)."""
        keys = list(keys)
        if 2 * (self._count + len(keys)) > self._mask:
            self._resize(self._count + len(keys))
        hashes, ids, mask = self._hashes, self._ids, self._mask
        entered = True
        for row_id, key in enumerate(keys, first_id):
            h = hash(key) or 1  # 0 marks a free slot
            i = h & mask
            while taken := hashes[i]:
                if taken == h:
                    entered = False
                    break
                i = (i + 1) & mask
            else:
                hashes[i], ids[i] = h, row_id
                self._count += 1
        return entered

    def find(self, keys: Iterable[str]) -> dict[str, int]:
        """key → the id entered with its hash, for the keys whose hash is in (the caller
        checks the row's key: another key may share the hash)."""
        hashes, ids, mask = self._hashes, self._ids, self._mask
        found = {}
        if mask < 0:
            return found
        for key in keys:
            h = hash(key) or 1
            i = h & mask
            while taken := hashes[i]:
                if taken == h:
                    found[key] = ids[i]
                    break
                i = (i + 1) & mask
        return found

    def _resize(self, count: int) -> None:
        size = 1024
        while size < 2 * count + 1:
            size *= 2
        old = zip(self._hashes, self._ids, strict=True)
        hashes = self._hashes = array("q", bytes(8 * size))
        ids = self._ids = array("q", bytes(8 * size))
        mask = self._mask = size - 1
        for h, row_id in old:
            if h:
                i = h & mask
                while hashes[i]:
                    i = (i + 1) & mask
                hashes[i], ids[i] = h, row_id


MINUTE = 60.0
"""Ages are kept to the minute: the aggregates count accounts per minute of a timestamp."""
DAY = 86_400.0
"""Consent ends are kept to the day: the aggregates count accounts per day of their end."""


class Contributions(NamedTuple):
    """What a set of stored rows adds to a source's aggregates (categories are the
    catalog's business: rows are grouped by code)."""

    accounts: list[tuple[str, str, int, int]]
    """(institution_id, code, flags, accounts): the flag bits are the tracker's to read"""
    broken: list[tuple[str, int, int]]
    """(code, minute of broken_since, accounts)"""
    success: list[tuple[int, int]]
    """(minute of success_ts, accounts)"""
    never_succeeded: int
    consent: list[tuple[str, int, int]] = []
    """(institution_id, day of consent_end, accounts)"""


def read_contributions(conn: sqlite3.Connection, source: str, *,
                       ids: str | None = None) -> Contributions:
    """Group one source's rows (or only those whose ids the JSON array ``ids`` lists) in
    SQLite. Each query is one scan grouped in C; nothing per account reaches Python.
    """
    where = "source=?" if ids is None else "source=? AND id IN (SELECT value FROM json_each(?))"
    args = (source,) if ids is None else (source, ids)
    minute = f"CAST(%s / {MINUTE} AS INTEGER)"
    with closing(conn.cursor()) as cur:
        accounts = cur.execute(
            f"SELECT institution_id, code, flags, count(*) "
            f"FROM {_SCAN} WHERE {where} GROUP BY 1, 2, 3", args).fetchall()
        broken = cur.execute(
            f"SELECT code, {minute % 'broken_since'}, count(*) FROM {_SCAN} "
            f"WHERE {where} AND broken_since IS NOT NULL GROUP BY 1, 2", args).fetchall()
        success = cur.execute(
            f"SELECT {minute % 'success_ts'}, count(*) FROM {_SCAN} "
            f"WHERE {where} AND success_ts IS NOT NULL GROUP BY 1", args).fetchall()
        never = cur.execute(
            f"SELECT count(*) FROM {_SCAN} WHERE {where} AND success_ts IS NULL",
            args).fetchone()[0]
        consent = cur.execute(
            f"SELECT institution_id, CAST(consent_end / {DAY} AS INTEGER), count(*) "
            f"FROM {_SCAN} WHERE {where} AND consent_end IS NOT NULL GROUP BY 1, 2",
            args).fetchall()
    return Contributions(accounts, broken, success, never, consent)
