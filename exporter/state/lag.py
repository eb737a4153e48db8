"""The refresh-lag counts: one grouped read of the tracker's ``accounts`` table, on the
read-only reader connection (WAL: it never blocks the writer, nor waits for it)."""

from __future__ import annotations

from exporter.state.database import StateDatabase

_QUERY = """
SELECT source, institution_id,
       SUM(success_ts >= :delayed),
       SUM(success_ts < :delayed AND success_ts >= :stopped),
       SUM(success_ts < :stopped),
       SUM(success_ts IS NULL)
FROM accounts GROUP BY source, institution_id
"""


def age_rows(database: StateDatabase, delayed: float,
             stopped: float) -> list[tuple[str, str, int | None, int | None, int | None, int | None]]:
    """Per (source, institution_id): accounts whose last success is at or after ``delayed``,
    between ``stopped`` and ``delayed``, before ``stopped``, and never (call it on the reader
    thread: ``await database.read(age_rows, database, …)``, or ``database.read_sync``)."""
    return database.reader.execute(_QUERY, {"delayed": delayed, "stopped": stopped}).fetchall()
