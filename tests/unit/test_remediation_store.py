"""The remediation tables: a database an earlier version wrote opens migrated."""

from __future__ import annotations

import json
import sqlite3

from exporter.state.database import StateDatabase
from exporter.state.remediation import RemediationStore
from exporter.state.schema import REMEDIATION

OLD_SCHEMA = REMEDIATION.replace("    request_code TEXT,\n", "")


def _old_database(path) -> None:
    """The tables as the first release created them, with three episodes (code now 185):
    a request still pending (its body says 103), one delivered (body emptied), none yet."""
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    episode = ("INSERT INTO fix_episodes (id, source, provider, owner_id, login_id, "
               "institution_id, institution, code, category, opened_at, broken_since, backlog, "
               "accounts, fixable, request_id, kind, request_category, requested_at) "
               "VALUES (?, 'fin', 'finicity', 'c', ?, '4222', 'FinBank', '185', 'credentials', "
               "1, 1, 0, '{}', 1, ?, 'fix', 'credentials', ?)")
    db.execute(episode, (1, "l1", "req-1", 2.0))
    db.execute(episode, (2, "l2", "req-2", 2.0))
    db.execute(episode, (3, "l3", None, None))
    outbox = ("INSERT INTO fix_outbox (id, episode_id, source, provider, institution_id, "
              "institution, kind, backlog, was_held, body, state, created_at, next_attempt_at) "
              "VALUES (?, ?, 'fin', 'finicity', '4222', 'FinBank', 'fix', 0, 0, ?, ?, 2, 2)")
    db.execute(outbox, ("req-1", 1, json.dumps({"id": "req-1", "code": "103"}), "pending"))
    db.execute(outbox, ("req-2", 2, "", "delivered"))
    db.commit()
    db.close()


def test_an_old_database_gets_the_request_code_from_the_body_or_the_latest_code(tmp_path):
    path = tmp_path / "state.db"
    _old_database(path)
    store = RemediationStore(StateDatabase(path))
    codes = {i: store.episode(i).request_code for i in (1, 2, 3)}
    store.close()
    assert codes == {1: "103", 2: "185", 3: None}


def test_the_migration_runs_once(tmp_path):
    path = tmp_path / "state.db"
    _old_database(path)
    RemediationStore(StateDatabase(path)).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE fix_episodes SET request_code = '187' WHERE id = 2")
    db.commit()
    db.close()
    store = RemediationStore(StateDatabase(path))
    assert store.episode(2).request_code == "187"
    store.close()
