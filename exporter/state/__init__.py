"""The state database: one SQLite file per agent, and everything that reads or writes it."""
