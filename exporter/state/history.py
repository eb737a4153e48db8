"""The institution history's table (schema: :data:`~exporter.state.schema.HISTORY`): one row
per (institution key, aggregator, quarter hour), as plain tuples (``exporter.health.history``
makes them points). Written on the writer connection; read on the read-only reader (a day of
a big fleet is a million rows: the status page never waits for a sweep's chunk).
"""

from __future__ import annotations

from exporter.state.database import FeatureTables


class HistoryTables(FeatureTables):
    feature = "history"

    def write_rows(self, rows: list[tuple], cutoff: int) -> None:
        """Write ``(key, provider, ts, accounts, ok, institution, aggregator, state)`` rows
        (replacing their quarter hour's) and drop those before ``cutoff``, in one
        transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO institution_history VALUES (?,?,?,?,?,?,?,?)", rows)
            db.execute("DELETE FROM institution_history WHERE ts < ?", (cutoff,))

    def rows_since(self, since: int) -> list[tuple]:
        """The rows from ``since`` on, by key, provider and time (on the reader)."""
        return self.database.read_sync(lambda: self.database.reader.execute(
            "SELECT key, provider, ts, accounts, ok, institution, aggregator, state "
            "FROM institution_history WHERE ts >= ? ORDER BY key, provider, ts",
            (since,)).fetchall())
