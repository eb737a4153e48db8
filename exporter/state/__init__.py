"""The state database: one SQLite file per agent, and everything that reads or writes it.

- :mod:`.file`: the file before it opens (one agent per file, a corrupt file moved aside) and
  the reason a write failed.
- :mod:`.database`: :class:`~exporter.state.database.StateDatabase`, the one owner: the
  writer connection and its one writer thread, the read-only reader, the schema.
- :mod:`.schema`: every table's schema and its migrations.
- The queries, one module per feature: :mod:`.accounts` (the tracker), :mod:`.remediation`
  (the repair loop), :mod:`.inbox` (the webhook inbox), :mod:`.history` (institution
  history), :mod:`.routing` (routing advice), :mod:`.lag` (refresh-lag counts).

No SQL lives outside this package (``tests/unit/test_state_database.py`` checks).
"""
