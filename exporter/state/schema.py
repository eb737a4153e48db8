"""The schema of every table in the state database, and its migrations.

Two kinds of tables share the file:

- **The tracker's** (``accounts``, ``account_keys``, ``keys_merged``, ``institutions``,
  ``transitions``) carry a version, ``PRAGMA user_version`` (:data:`SCHEMA_VERSION`):
  :func:`migrate_accounts` brings an older file up to it when the database opens, and a file
  from a newer agent is refused with a clear message.
- **The features'** (the repair loop's, the webhook inbox's, the institution history, the
  routing advice: :data:`FEATURES`) are created ``IF NOT EXISTS`` at the feature's first use,
  on the one writer connection, and migrated in place where a column was added later
  (idempotent). They do not move ``user_version``: an older agent still opens the file, and a
  state file that cannot be written fails that feature's use, never the start.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    account_key TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    code TEXT NOT NULL,
    attempt_ts REAL,
    success_ts REAL,
    broken_since REAL,
    mfa_streak INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    consent_end REAL
);
CREATE TABLE IF NOT EXISTS account_keys (
    source TEXT NOT NULL,
    account_key TEXT NOT NULL,
    id INTEGER NOT NULL,
    PRIMARY KEY (source, account_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS keys_merged (upto INTEGER NOT NULL);
INSERT INTO keys_merged SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM keys_merged);
CREATE TRIGGER IF NOT EXISTS accounts_forget_key AFTER DELETE ON accounts BEGIN DELETE FROM account_keys WHERE source = old.source AND account_key = old.account_key AND id = old.id; END;
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
"""

# Schema 1 kept one WITHOUT ROWID row per (source, account_key) with the category, fixable
# and provider copied in (all derivable from the code and the source), the MFA flags as
# three columns, and the id of the last sweep that saw the row (rewritten every sweep).
_MIGRATE_FROM_1 = """
ALTER TABLE accounts RENAME TO accounts_v1;
{schema}
INSERT INTO accounts (source, account_key, institution_id, code, attempt_ts, success_ts,
                      broken_since, mfa_streak, flags)
    SELECT source, account_key, institution_id, code, attempt_ts, success_ts, broken_since,
           mfa_streak, otp * {otp} + relapsed * {relapsed} + after_fix * {after_fix}
    FROM accounts_v1 ORDER BY source, account_key;
DROP TABLE accounts_v1;
DROP TABLE IF EXISTS sweeps;
"""
_SCHEMA_2_FLAGS = {"otp": 1, "relapsed": 2, "after_fix": 4}
"""The bits schema 2 gave schema 1's three MFA columns (the tracker's rule still uses them;
a migration keeps its own copy, as the file it reads was written then)."""
# Schema 2 kept the key index as a unique index on accounts, updated by every first
# sighting (random inserts for random keys); schema 3 keeps it as its own table, merged in
# key order from the rows first seen since the last merge (ids above keys_merged.upto).
_MIGRATE_FROM_2 = """
INSERT INTO account_keys (source, account_key, id)
    SELECT source, account_key, id FROM accounts ORDER BY source, account_key;
UPDATE keys_merged SET upto = (SELECT coalesce(max(id), 0) FROM accounts);
DROP INDEX IF EXISTS accounts_by_key;
"""
# Schema 4 adds each account's consent end (Finicity authorizationEndDate when
# authorizationExpires is true): a nullable column added in place, no row rewritten.
_MIGRATE_FROM_3 = """
ALTER TABLE accounts ADD COLUMN consent_end REAL;
"""


def migrate_accounts(db: sqlite3.Connection, path: object) -> None:
    """Bring the tracker's tables to :data:`SCHEMA_VERSION` (one transaction); raise
    ``sqlite3.DatabaseError`` for a file written by a newer agent."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"{path}: state schema {version} is newer than this agent's "
            f"({SCHEMA_VERSION}); run the newer agent or move the state file away")
    if version == SCHEMA_VERSION:
        return  # nothing to write: a read-only file still opens (its sweeps then fail)
    script = _SCHEMA if version != 1 else _MIGRATE_FROM_1.format(
        schema=_SCHEMA, **_SCHEMA_2_FLAGS)
    if version in (1, 2):
        script += _MIGRATE_FROM_2
    if version in (2, 3):  # (schema 1's rows were copied into the new table)
        script += _MIGRATE_FROM_3
    # statement by statement: executescript would commit half-way
    _in_transaction(db, [s for s in script.split(";\n") if s.strip()]
                    + [f"PRAGMA user_version={SCHEMA_VERSION}"])


def _in_transaction(db: sqlite3.Connection, statements: list[str]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for statement in statements:
            db.execute(statement)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


# --- the repair loop (exporter/remediation) ---------------------------------------------------

REMEDIATION = """
CREATE TABLE IF NOT EXISTS fix_episodes (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    provider TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    login_id TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    institution TEXT NOT NULL,
    code TEXT NOT NULL,
    category TEXT NOT NULL,
    opened_at REAL NOT NULL,
    broken_since REAL NOT NULL,
    backlog INTEGER NOT NULL,
    accounts TEXT NOT NULL,
    fixable INTEGER NOT NULL,
    any_fixed INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    kind TEXT,
    request_category TEXT,
    request_code TEXT,
    requested_at REAL,
    delivered_at REAL,
    outcome TEXT,
    closed_at REAL,
    close_reason TEXT,
    rebroke INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX IF NOT EXISTS fix_episodes_open
    ON fix_episodes (source, owner_id, login_id) WHERE closed_at IS NULL;
CREATE INDEX IF NOT EXISTS fix_episodes_fixed
    ON fix_episodes (source, owner_id, login_id, closed_at) WHERE close_reason = 'fixed';
CREATE INDEX IF NOT EXISTS fix_episodes_waiting
    ON fix_episodes (id) WHERE closed_at IS NULL AND request_id IS NULL AND fixable = 1;
CREATE INDEX IF NOT EXISTS fix_episodes_closed
    ON fix_episodes (closed_at) WHERE closed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS fix_episodes_delivered
    ON fix_episodes (requested_at) WHERE closed_at IS NULL AND outcome IS NULL
                                     AND delivered_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS fix_episode_accounts (
    source TEXT NOT NULL,
    account_key TEXT NOT NULL,
    episode_id INTEGER NOT NULL,
    PRIMARY KEY (source, account_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fix_episode_accounts_by_episode ON fix_episode_accounts (episode_id);
CREATE TABLE IF NOT EXISTS fix_outbox (
    id TEXT PRIMARY KEY,
    episode_id INTEGER NOT NULL,
    source TEXT NOT NULL,
    provider TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    institution TEXT NOT NULL,
    kind TEXT NOT NULL,
    backlog INTEGER NOT NULL,
    was_held INTEGER NOT NULL,
    body TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    finished_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS fix_outbox_due ON fix_outbox (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS fix_outbox_held ON fix_outbox (source, institution_id) WHERE state = 'held';
CREATE INDEX IF NOT EXISTS fix_outbox_recent ON fix_outbox (source, institution_id, created_at);
CREATE TABLE IF NOT EXISTS fix_baselines (
    source TEXT PRIMARY KEY,
    done_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS consent_periods (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    provider TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    login_id TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    institution TEXT NOT NULL,
    code TEXT NOT NULL,
    category TEXT NOT NULL,
    end_at REAL NOT NULL,
    seen_at REAL NOT NULL,
    accounts TEXT NOT NULL,
    request_id TEXT,
    requested_at REAL,
    delivered_at REAL,
    outcome TEXT,
    closed_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS consent_periods_open
    ON consent_periods (source, owner_id, login_id) WHERE closed_at IS NULL;
CREATE INDEX IF NOT EXISTS consent_periods_waiting
    ON consent_periods (end_at) WHERE closed_at IS NULL AND request_id IS NULL;
CREATE TABLE IF NOT EXISTS fix_releases (
    source TEXT NOT NULL,
    institution_id TEXT NOT NULL,
    released_at REAL NOT NULL,
    PRIMARY KEY (source, institution_id)
) WITHOUT ROWID;
"""


def _migrate_remediation(db: sqlite3.Connection) -> None:
    """``request_code`` (the code a request was made for, the funnel's label): for requests
    made before it existed, the code in the stored body while it is kept (undelivered), else
    the episode's latest code, the best left to know."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(fix_episodes)")}
    if "request_code" in columns:
        return
    _in_transaction(db, [
        "ALTER TABLE fix_episodes ADD COLUMN request_code TEXT",
        "UPDATE fix_episodes SET request_code = coalesce((SELECT json_extract(o.body, "
        "'$.code') FROM fix_outbox o WHERE o.id = fix_episodes.request_id "
        "AND json_valid(o.body)), code) WHERE request_id IS NOT NULL"])


# --- the webhook inbox (exporter/webhooks) ----------------------------------------------------

INBOX = (
    """CREATE TABLE IF NOT EXISTS webhook_inbox (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        owner TEXT NOT NULL,
        kind TEXT NOT NULL,
        received_at REAL NOT NULL,
        keep_until REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        done_at REAL
    )""",
    "CREATE UNIQUE INDEX IF NOT EXISTS webhook_inbox_key "
    "ON webhook_inbox (source, dedupe_key, owner)",
    "CREATE INDEX IF NOT EXISTS webhook_inbox_pending ON webhook_inbox (id) WHERE done_at IS NULL",
    """CREATE TABLE IF NOT EXISTS webhook_secrets (
        source TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        first_seen REAL NOT NULL,
        PRIMARY KEY (source, fingerprint)
    ) WITHOUT ROWID""",
)

# --- institution history (exporter/health) ----------------------------------------------------

HISTORY = """
CREATE TABLE IF NOT EXISTS institution_history (
    key TEXT NOT NULL,
    provider TEXT NOT NULL,
    ts INTEGER NOT NULL,
    accounts INTEGER NOT NULL,
    ok REAL,
    institution REAL,
    aggregator REAL,
    state TEXT NOT NULL,
    PRIMARY KEY (key, provider, ts)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS institution_history_ts ON institution_history (ts);
"""

# --- routing advice (exporter/routing) --------------------------------------------------------

ROUTING = """
CREATE TABLE IF NOT EXISTS routing_advice (
    key TEXT PRIMARY KEY,
    body TEXT NOT NULL
) WITHOUT ROWID;
"""


def _script(script: str) -> Callable[[sqlite3.Connection], None]:
    return lambda db: db.executescript(script) and None


def _statements(statements: tuple[str, ...]) -> Callable[[sqlite3.Connection], None]:
    def create(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)
    return create


def _remediation(db: sqlite3.Connection) -> None:
    db.executescript(REMEDIATION)
    _migrate_remediation(db)


FEATURES: dict[str, Callable[[sqlite3.Connection], None]] = {
    "remediation": _remediation,
    "inbox": _statements(INBOX),
    "history": _script(HISTORY),
    "routing": _script(ROUTING),
}
"""feature → what creates (and migrates) its tables on the writer connection (idempotent)."""
