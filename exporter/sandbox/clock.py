"""Sandbox time: wall-clock seconds (injectable) and the night number on an accelerated scale.

Night ``N`` starts at a wall-clock second ``night_start(N)``; every attempt of that night's
batch carries that timestamp. Night starts are whole seconds and strictly increasing, and
not later than ``now()`` when entered (unless nights are advanced faster than one per
second, which runs ahead by at most that many seconds), so an agent that checks timestamps
against its own real clock does not see the future.

Two modes: *auto* (``night_seconds > 0``: a new night every ``night_seconds`` real seconds,
e.g. 20 s in the demo) and *manual* (``night_seconds == 0``: nights advance only through
:meth:`SandboxClock.advance`, i.e. ``POST /sandbox/advance``). Manual advances are allowed
in auto mode too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class SandboxClock:
    """Night bookkeeping over a time source (``time.time`` unless a test injects one)."""

    def __init__(self, night_seconds: float = 0.0, time_source: Callable[[], float] = time.time):
        if night_seconds < 0:
            raise ValueError("night_seconds cannot be negative")
        self.night_seconds = float(night_seconds)
        self._time = time_source
        now = self._time()
        self._anchor = now  # auto mode: wall time at which auto-night 0 began
        self._manual = 0  # nights added by advance()
        self._starts = [int(now)]
        self._reserved = self._starts[0]  # later nights start after this second

    @property
    def mode(self) -> str:
        return "auto" if self.night_seconds > 0 else "manual"

    def now(self) -> float:
        return self._time()

    def _auto_nights(self, now: float) -> int:
        if self.night_seconds <= 0:
            return 0
        return max(0, math.floor((now - self._anchor) / self.night_seconds))

    def _sync(self) -> None:
        now = self._time()
        target = self._manual + self._auto_nights(now)
        while len(self._starts) - 1 < target:
            n = len(self._starts)
            # When the auto boundary of night n was crossed (not "now"): an idle sandbox that
            # is asked after several nights still dates each night's batch at its own start.
            boundary = self._anchor + (n - self._manual) * self.night_seconds
            start = int(min(boundary, now)) if self.night_seconds > 0 else int(now)
            self._starts.append(max(start, self._floor()))

    @property
    def night(self) -> int:
        self._sync()
        return len(self._starts) - 1

    def advance(self, nights: int = 1) -> int:
        """Move ``nights`` nights forward now; returns the new night number."""
        if nights < 0:
            raise ValueError("nights cannot be negative")
        self._sync()
        now = int(self._time())
        for i in range(nights, 0, -1):
            # The last new night starts now, the ones before it a second apart; only when
            # nights are advanced faster than one per second do starts run ahead of now.
            self._manual += 1
            self._starts.append(max(now - (i - 1), self._floor()))
        return len(self._starts) - 1

    def _floor(self) -> int:
        return max(self._starts[-1], self._reserved) + 1

    def reserve(self, second: int) -> None:
        """Nights that begin from now on start after ``second`` (an attempt made outside the
        nightly batch, e.g. a Connect Fix, stays distinct from the next night's)."""
        self._reserved = max(self._reserved, second)

    def night_start(self, night: int) -> int:
        """Epoch second at which ``night``'s batch ran (``night`` <= the current night)."""
        if night < 0:
            return self._starts[0] + night * 86400
        if night >= len(self._starts):
            self._sync()
        return self._starts[night]

    def next_night_at(self) -> float | None:
        """Wall time of the next automatic night, or None in manual mode."""
        if self.night_seconds <= 0:
            return None
        now = self._time()
        return self._anchor + (self._auto_nights(now) + 1) * self.night_seconds
