"""Durations in the configuration: ``"90s"``, ``"1h30m"``, ``"250ms"`` or seconds.

A module of its own so that every feature's config model (``exporter.health.config``,
``exporter.remediation.config``, …) can use it without importing ``exporter.config``,
which imports them.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))+\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """``"90s"``, ``"1h30m"``, ``"250ms"`` or a number of seconds → seconds."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 5m or 1h")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _DURATION.match(value):
        return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    raise ValueError("expected a duration such as 30s, 5m or 1h")


def non_negative_duration(value: Any) -> float:
    """A pydantic ``mode="before"`` validator: a duration, never negative."""
    seconds = parse_duration(value)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds
