"""Small asyncio helpers the long-running loops share."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def wait_for_event(event: asyncio.Event, timeout: float, *, clear: bool = True) -> bool:
    """Until ``event`` is set or ``timeout`` passes (then clears it unless ``clear=False``);
    True when it was set.

    Unlike ``asyncio.wait_for(event.wait(), timeout)``, a cancellation that arrives as the
    event is set is never swallowed: Python 3.11's ``wait_for`` returns the inner result in
    that race, and a loop cancelled at shutdown by the same action that sets its event would
    go on forever.
    """
    if not event.is_set():
        waiter = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((waiter,), timeout=timeout)
        finally:
            waiter.cancel()
    was_set = event.is_set()
    if clear:
        event.clear()
    return was_set


async def complete_even_if_cancelled(step: Awaitable[T]) -> T:
    """Run ``step`` to its end even when the caller is cancelled meanwhile (then re-raise the
    cancel once it has finished): for bookkeeping that must not stop half-way, such as
    marking applied events done and saying so."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def quiet_when_cancelled(job: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T | None]]:
    """A scheduled coroutine job that ends quietly when the agent's stop cancels it: the
    scheduler logs a cancelled job as a failure, at error level with a traceback."""

    @functools.wraps(job)
    async def run(*args: Any, **kwargs: Any) -> T | None:
        try:
            return await job(*args, **kwargs)
        except asyncio.CancelledError:
            log.debug("scheduled job cancelled by the stop job=%s", job.__qualname__)
            return None

    return run


class Gate:
    """Admits work until closed; :meth:`close` then waits for what it admitted to finish.

    The listeners' routes that persist (webhook deliveries) or read a store (fix clicks)
    pass through one: during a stop, new requests get 503 with ``Retry-After`` while those
    already in flight complete, and only then do the stores close."""

    def __init__(self) -> None:
        self.is_open = True
        self._inside = 0
        self._idle: asyncio.Event | None = None

    def enter(self) -> bool:
        if not self.is_open:
            return False
        self._inside += 1
        return True

    def leave(self) -> None:
        self._inside -= 1
        if self._inside == 0 and self._idle is not None:
            self._idle.set()

    @property
    def inside(self) -> int:
        return self._inside

    async def close(self, timeout: float) -> bool:
        """Refuse new work and wait up to ``timeout`` for the rest; True when all finished."""
        self.is_open = False
        if self._inside == 0:
            return True
        self._idle = asyncio.Event()
        return await wait_for_event(self._idle, timeout, clear=False)
