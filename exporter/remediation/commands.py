"""``openfinance-exporter remediation held|release``: the operator's side of the storm guard.

Both work on the state database directly (SQLite serialises them with a running agent,
whose delivery worker picks released requests up within seconds).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from exporter.state.database import StateDatabase
from exporter.state.remediation import RemediationStore, StoreError


def add_parser(sub, common: Callable[..., None]) -> None:
    parser = sub.add_parser("remediation", help="operate the repair loop (storm guard)")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    held = actions.add_parser("held", help="list requests held by the storm guard")
    release = actions.add_parser(
        "release", help="send the held requests of one institution (or all of a source)")
    release.add_argument("--source", required=True, help="configured source name")
    release.add_argument("--institution", default=None, metavar="ID",
                         help="institution_id (default: every held institution of the source)")
    for p in (held, release):
        common(p)
        p.add_argument("--state.path", dest="state_path", default=None, metavar="PATH",
                       help="state database (default: state.path from the configuration)")


def run(args: argparse.Namespace, state_path: Path, out=print) -> int:
    try:
        store = RemediationStore(StateDatabase(state_path))
    except StoreError as exc:
        out(str(exc))
        return 1
    try:
        if args.action == "held":
            rows = store.held_list()
            if not rows:
                out("no requests held")
            for source, institution_id, institution, n in rows:
                out(f"{source}\t{institution_id}\t{institution}\t{n}")
            return 0
        n = store.release(args.source, args.institution, time.time())
        where = f"institution {args.institution}" if args.institution else "every institution"
        out(f"released {n} held request(s) of source {args.source}, {where}")
        return 0
    finally:
        store.close()
