"""The tracker package: the transition rule, sweep sessions, aggregates, account events.

Public names are re-exported here; modules import ``from exporter.tracker import ...``.
"""

from exporter.records import clean_label
from exporter.tracker.aggregates import (
    CONSENT_WINDOWS,
    OTHER,
    AgeHistogram,
    ChunkDelta,
    ConsentHorizon,
    FleetState,
    Snapshot,
    SourceAggregate,
)
from exporter.tracker.events import AccountEvent, EventKind, Subscriber
from exporter.tracker.session import SweepSession
from exporter.tracker.tracker import Tracker, TrackerEvents
from exporter.tracker.transition import AccountState, CodeFacts, transition

__all__ = [
    "CONSENT_WINDOWS",
    "OTHER",
    "AccountEvent",
    "AccountState",
    "AgeHistogram",
    "ChunkDelta",
    "CodeFacts",
    "ConsentHorizon",
    "EventKind",
    "FleetState",
    "Snapshot",
    "SourceAggregate",
    "Subscriber",
    "SweepSession",
    "Tracker",
    "TrackerEvents",
    "clean_label",
    "transition",
]
