"""When to retry an upstream answer, and how long to wait: full-jitter backoff, Retry-After."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime

from exporter.config import HttpConfig


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """``Retry-After`` as delta-seconds or an HTTP date, in seconds from ``now``."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class RetryPolicy:
    """Which answers are worth another try, and the wait before it.

    ``is_outcome_code`` says whether an error ``code`` in a 5xx body is an aggregation
    outcome (Finicity sends those as HTTP 500): such answers are final, not retried.
    """

    def __init__(self, http: HttpConfig, random: Callable[[], float],
                 is_outcome_code: Callable[[int], bool]):
        self.max_retries = http.max_retries
        self._base = http.backoff_base
        self._max = http.backoff_max
        self._random = random
        self._is_outcome_code = is_outcome_code

    def reason(self, status: int, code: int | None) -> str | None:
        """The retry reason for an HTTP status (and body code), or None when it is final."""
        if status == 429:
            return "rate_limited"
        if status == 408:
            return "timeout"
        if status >= 500:
            if code is not None and self._is_outcome_code(code):
                return None  # an aggregation outcome riding on HTTP 500: final
            return "server_error"
        return None

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Full jitter: uniform in [0, min(max, base·2^(attempt-1))]; Retry-After wins, capped."""
        if retry_after is not None:
            return min(retry_after, self._max)
        ceiling = min(self._max, self._base * 2 ** (attempt - 1))
        return self._random() * ceiling
