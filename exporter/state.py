"""Per-account state in SQLite (WAL), so streaks, broken-since, last success and transition
counts survive a restart.

The store holds no per-account data in Python memory: a sweep reads the previous rows of
the chunk it is applying and writes the new ones back in one transaction per chunk.
Aggregation reads go through a separate read-only connection (WAL lets readers run beside
the writer), so they can be done off the event loop.
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import NamedTuple

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    source TEXT NOT NULL,
    account_key TEXT NOT NULL,
    provider TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    code TEXT NOT NULL,
    category TEXT NOT NULL,
    fixable INTEGER NOT NULL,
    attempt_ts REAL,
    success_ts REAL,
    broken_since REAL,
    mfa_streak INTEGER NOT NULL,
    after_fix INTEGER NOT NULL,
    relapsed INTEGER NOT NULL,
    otp INTEGER NOT NULL,
    sweep_id INTEGER NOT NULL,
    PRIMARY KEY (source, account_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS institutions (
    source TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (source, institution_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS transitions (
    source TEXT NOT NULL,
    provider TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    from_category TEXT NOT NULL,
    to_category TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (source, provider, institution_id, from_category, to_category)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sweeps (
    source TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
) WITHOUT ROWID;
"""


class AccountRow(NamedTuple):
    """The stored state of one account (column order of ``accounts`` after the key)."""

    provider: str
    institution_id: str
    code: str
    category: str
    fixable: int
    attempt_ts: float | None
    success_ts: float | None
    broken_since: float | None
    mfa_streak: int
    after_fix: int
    relapsed: int
    otp: int


_ROW_COLUMNS = ", ".join(AccountRow._fields)
_UPSERT = (
    f"INSERT OR REPLACE INTO accounts (source, account_key, {_ROW_COLUMNS}, sweep_id) "
    f"VALUES ({', '.join('?' * (len(AccountRow._fields) + 3))})"
)
# SQLite (3.32+) allows 32,766 host parameters; stay well below.
_IN_CHUNK = 2000


class StateStore:
    """The SQLite database behind the tracker. One writer connection, used from one thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA cache_size=-32768")  # 32 MiB of pages, bounded
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def next_sweep_id(self, source: str) -> int:
        with self.transaction() as db:
            row = db.execute("SELECT last_id FROM sweeps WHERE source=?", (source,)).fetchone()
            sweep_id = (row[0] if row else 0) + 1
            db.execute("INSERT OR REPLACE INTO sweeps (source, last_id) VALUES (?, ?)",
                       (source, sweep_id))
        return sweep_id

    def load_accounts(self, source: str, keys: Sequence[str]) -> dict[str, AccountRow]:
        out: dict[str, AccountRow] = {}
        for i in range(0, len(keys), _IN_CHUNK):
            part = keys[i:i + _IN_CHUNK]
            cur = self._db.execute(
                f"SELECT account_key, {_ROW_COLUMNS} FROM accounts "
                f"WHERE source=? AND account_key IN ({','.join('?' * len(part))})",
                (source, *part),
            )
            for key, *rest in cur:
                out[key] = AccountRow(*rest)
        return out

    def write_chunk(
        self,
        source: str,
        sweep_id: int,
        rows: Iterable[tuple[str, AccountRow]],
        transitions: dict[tuple[str, str, str, str], int],
        institutions: dict[str, str],
    ) -> None:
        """Upsert a chunk of accounts, add transition counts and names, in one transaction."""
        with self.transaction() as db:
            db.executemany(_UPSERT, ((source, key, *row, sweep_id) for key, row in rows))
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

    def drop_unseen(self, source: str, sweep_id: int) -> int:
        """Delete accounts a complete sweep did not see: they are gone upstream."""
        with self.transaction() as db:
            cur = db.execute("DELETE FROM accounts WHERE source=? AND sweep_id<>?",
                             (source, sweep_id))
            return cur.rowcount

    def sources(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT source FROM accounts")]

    def reader(self) -> sqlite3.Connection:
        """A new read-only connection, for aggregation off the writer's thread."""
        uri = f"file:{self.path.resolve()}?mode=ro"
        return sqlite3.connect(uri, uri=True, check_same_thread=False)


class SourceRows(NamedTuple):
    """What aggregation reads for one source (all from one consistent read transaction)."""

    accounts: list[tuple[str, str, str, str, int, int, int]]
    institutions: dict[str, str]
    transitions: list[tuple[str, str, str, str, int]]
    broken_since: dict[str, array]
    success_ts: array
    never_succeeded: int


def read_source(conn: sqlite3.Connection, source: str) -> SourceRows:
    """Read the aggregates of one source: grouped counts plus sorted per-account timestamps.

    Timestamps stream straight into ``array('d')`` (8 bytes each), never into a list of
    Python floats, so a million accounts cost megabytes, not tens of them.
    """
    with closing(conn.cursor()) as cur:
        cur.execute("BEGIN")
        accounts = cur.execute(
            "SELECT provider, institution_id, code, category, fixable, count(*), sum(otp) "
            "FROM accounts WHERE source=? "
            "GROUP BY provider, institution_id, code, category, fixable",
            (source,),
        ).fetchall()
        names = dict(cur.execute(
            "SELECT institution_id, name FROM institutions WHERE source=?", (source,)))
        transitions = cur.execute(
            "SELECT provider, institution_id, from_category, to_category, count "
            "FROM transitions WHERE source=?", (source,)).fetchall()
        broken: dict[str, array] = {}
        for category in [r[0] for r in cur.execute(
                "SELECT DISTINCT category FROM accounts "
                "WHERE source=? AND broken_since IS NOT NULL", (source,))]:
            broken[category] = array("d", (r[0] for r in cur.execute(
                "SELECT broken_since FROM accounts WHERE source=? AND category=? "
                "AND broken_since IS NOT NULL ORDER BY broken_since", (source, category))))
        success = array("d", (r[0] for r in cur.execute(
            "SELECT success_ts FROM accounts WHERE source=? AND success_ts IS NOT NULL "
            "ORDER BY success_ts", (source,))))
        never = cur.execute("SELECT count(*) FROM accounts WHERE source=? AND success_ts IS NULL",
                            (source,)).fetchone()[0]
        cur.execute("COMMIT")
    return SourceRows(accounts, names, transitions, broken, success, never)
