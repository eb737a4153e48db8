"""Benchmarks of the routing advice and the institution history (numbers for the issue notes;
never asserted in tests).

A synthetic snapshot of N banks (default 5,000) at both aggregators, every tenth one down at
Finicity: the health report built from it, one evaluation of the advice over it, the
``/api/v1/routing`` body and the UCP export, one history point written for every (key,
provider), the last 24 h read back once 96 quarter hours are stored, the history table's size
per pair, and the /status page with the advice and the sparklines.

Run: ``python bench/bench_routing.py [--institutions 5000]``.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_tracker import reference_loop
from exporter.health.directory import InstitutionDirectory, InstitutionFacts
from exporter.health.history import POINT_EVERY, HistoryStore, points_of
from exporter.health.page import render_status_page
from exporter.health.report import build_report
from exporter.routing.advisor import Advisor
from exporter.routing.config import RoutingConfig
from exporter.state.database import StateDatabase
from exporter.tracker import AgeHistogram, Snapshot, SourceAggregate

NOW = 1_800_000_000.0


def _fleet(n: int) -> tuple[Snapshot, InstitutionDirectory]:
    directory = InstitutionDirectory()
    fin, mx = [], []
    for i in range(n):
        name = f"Bank {i}"
        directory.record(InstitutionFacts("fin", "finicity", str(100000 + i), name,
                                          f"https://bank{i}.example.com", None, NOW))
        directory.record(InstitutionFacts("mx", "mx", f"bank_{i}", name,
                                          f"https://bank{i}.example.com"))
        bad = 80 if i % 10 == 0 else 1
        fin += [(str(100000 + i), name, "0", "ok", 100 - bad),
                (str(100000 + i), name, "910", "institution", bad)]
        mx += [(f"bank_{i}", name, "CONNECTED", "ok", 60)]
    success = AgeHistogram.of({(NOW - 3600) // 60: 1000})
    return Snapshot(version=1, sources={
        "fin": SourceAggregate("fin", "finicity", accounts=tuple(fin), success=success),
        "mx": SourceAggregate("mx", "mx", accounts=tuple(mx), success=success)}), directory


def _timed(label: str, fn, repeat: int = 3):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    print(f"{label:<52} {best * 1000:9.1f} ms")
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--institutions", type=int, default=5000)
    args = parser.parse_args()
    n = args.institutions
    snap, directory = _fleet(n)
    print(f"{n} banks at two aggregators ({2 * n} (key, provider) pairs)")
    report = _timed("health report (build_report)", lambda: build_report(snap, directory, NOW))
    advisor = Advisor(RoutingConfig(hold=0), ["finicity", "mx"])
    advice = _timed("advice: one evaluation (Advisor.update)", lambda: advisor.update(report))
    away = sum(a.shares["finicity"] == 0 for a in advice)
    body = _timed("GET /api/v1/routing body (as_json + json.dumps)",
                  lambda: json.dumps(advisor.as_json(advice, NOW)))
    _timed("?format=ucp body", lambda: json.dumps(advisor.ucp(advice)))
    print(f"  {away} banks routed away from Finicity; JSON {len(body) / 1e6:.2f} MB")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        store = HistoryStore(StateDatabase(path))
        points = _timed("history: points of one report (points_of)", lambda: points_of(report))
        _timed("history: one quarter hour written (record)",
               lambda: store.record(points, NOW), repeat=1)
        for q in range(1, 96):  # a day of quarter hours
            ts = NOW - q * POINT_EVERY
            store.record({pair: p._replace(ts=ts) for pair, p in points.items()}, NOW)
        history = _timed("history: the last 24 h read (96 points per pair)",
                         lambda: store.read(NOW - 86400))
        store.close()
        with sqlite3.connect(path) as db:
            db.execute("VACUUM")
        size = path.stat().st_size
        print(f"  state database with 96 points per pair: {size / 1e6:.1f} MB, "
              f"{size / (2 * n * 96):.0f} B per point, "
              f"{size / (2 * n) * 2 / 1e3:.1f} kB per pair at 48 h (192 points)")
    routing = {a.key: a for a in advice}
    _timed("/status page without advice and sparklines (before)",
           lambda: render_status_page(report, "/api/v1/institutions"))
    page = _timed("/status page with advice and sparklines",
                  lambda: render_status_page(report, "/api/v1/institutions", routing, history))
    print(f"  page {len(page) / 1e6:.1f} MB")
    print(f"reference: sum(i*i for i in range(10**7)) takes {reference_loop():.2f} s here")


if __name__ == "__main__":
    main()
