"""A token bucket on the injected clock: the source's requests-per-second limit."""

from __future__ import annotations

from exporter.sources.base import Clock, Sleep


class TokenBucket:
    """``rate`` requests per second with bursts up to ``burst``, on the injected clock and sleep.

    A caller takes a token at once and, when the bucket is in debt, sleeps until its token
    would have been refilled: no polling loop, so a fake clock cannot make it spin.
    Hand-written because library limiters read the event loop's own clock.
    """

    def __init__(self, rate: float, burst: int, clock: Clock, sleep: Sleep):
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()

    async def acquire(self) -> None:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        self._tokens -= 1
        if self._tokens < 0:
            await self._sleep(-self._tokens / self._rate)
