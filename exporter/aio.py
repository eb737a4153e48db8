"""Small asyncio helpers the long-running loops share."""

from __future__ import annotations

import asyncio


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
