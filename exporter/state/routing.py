"""The routing advice's table (schema: :data:`~exporter.state.schema.ROUTING`): one row per
institution key, its body JSON (``exporter.routing.store`` reads and writes the bodies)."""

from __future__ import annotations

from collections.abc import Iterable

from exporter.state.database import FeatureTables


class RoutingTables(FeatureTables):
    feature = "routing"

    def rows(self) -> list[tuple[str, str]]:
        """Every (key, body)."""
        return self.db.execute("SELECT key, body FROM routing_advice").fetchall()

    def write_rows(self, upserts: Iterable[tuple[str, str]], deletes: Iterable[str]) -> None:
        """Replace the (key, body) rows of ``upserts`` and delete the keys of ``deletes``, in
        one transaction."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO routing_advice VALUES (?, ?)", list(upserts))
            db.executemany("DELETE FROM routing_advice WHERE key = ?", [(k,) for k in deletes])
