"""The webhook inbox's tables (schema: :data:`~exporter.state.schema.INBOX`): verified
deliveries, one row per (source, dedupe key, owner), and the first sighting of each secret.

Blocking methods on the writer connection: :class:`~exporter.webhooks.inbox.WebhookInbox`
calls them on the writer thread, the writes of requests that arrive together inside one
:meth:`~exporter.state.database.FeatureTables.transaction` (group commit).
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.state.database import FeatureTables

_INSERT = ("INSERT OR IGNORE INTO webhook_inbox (source, dedupe_key, owner, kind, received_at, "
           "keep_until, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
_IN_CHUNK = 500


class InboxTables(FeatureTables):
    feature = "inbox"

    def insert(self, source: str, dedupe_key: str, owner: str, kind: str, received_at: float,
               keep_until: float) -> int | None:
        """The new row's id, or None when the key was there already (a redelivery)."""
        cur = self.db.execute(_INSERT, (source, dedupe_key, owner, kind, received_at,
                                        keep_until, received_at))
        return cur.lastrowid if cur.rowcount > 0 else None

    def first_seen(self, source: str, fingerprint: str, now: float) -> float:
        db = self.db
        db.execute("INSERT OR IGNORE INTO webhook_secrets VALUES (?, ?, ?)",
                   (source, fingerprint, now))
        return db.execute("SELECT first_seen FROM webhook_secrets WHERE source = ? AND "
                          "fingerprint = ?", (source, fingerprint)).fetchone()[0]

    def pending(self) -> list[tuple]:
        """(id, source, owner, kind, received_at, attempts, next_attempt_at) of every row not
        done yet, oldest first."""
        return self.db.execute(
            "SELECT id, source, owner, kind, received_at, attempts, next_attempt_at "
            "FROM webhook_inbox WHERE done_at IS NULL ORDER BY id").fetchall()

    def mark_done(self, ids: Sequence[int], now: float) -> None:
        self._update_ids("UPDATE webhook_inbox SET done_at = ? WHERE id IN ({})", (now,), ids)

    def retry_later(self, ids: Sequence[int], at: float) -> None:
        self._update_ids("UPDATE webhook_inbox SET attempts = attempts + 1, next_attempt_at = ? "
                         "WHERE id IN ({})", (at,), ids)

    def prune(self, now: float) -> int:
        return self.db.execute(
            "DELETE FROM webhook_inbox WHERE done_at IS NOT NULL AND keep_until < ?",
            (now,)).rowcount

    def counts(self) -> tuple[int, int]:
        """(pending, done) rows."""
        return self.db.execute(
            "SELECT count(*) - count(done_at), count(done_at) FROM webhook_inbox").fetchone()

    def _update_ids(self, sql: str, head: tuple, ids: Sequence[int]) -> None:
        db = self.db
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            db.execute(sql.format(",".join("?" * len(chunk))), (*head, *chunk))
