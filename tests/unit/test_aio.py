"""The shared wait helper: set, timeout, and a cancellation racing the event's set."""

from __future__ import annotations

import asyncio
import logging

import pytest

from exporter.aio import complete_even_if_cancelled, wait_for_event
from exporter.web.server import report_pending_tasks


async def test_returns_true_when_set_and_clears():
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.01, event.set)
    assert await wait_for_event(event, 5) is True
    assert not event.is_set()


async def test_returns_false_after_the_timeout():
    assert await wait_for_event(asyncio.Event(), 0.01) is False


async def test_keeps_the_event_set_when_asked():
    event = asyncio.Event()
    event.set()
    assert await wait_for_event(event, 5, clear=False) is True
    assert event.is_set()


async def test_a_cancel_that_races_the_set_is_not_swallowed():
    # What Python 3.11's wait_for gets wrong: shutdown cancels a loop by the same action that
    # sets its event, and the loop went on forever.
    event = asyncio.Event()
    task = asyncio.create_task(wait_for_event(event, 10))
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_slow_shutdown_names_what_it_waits_for(caplog):
    async def stuck_somewhere() -> None:
        await asyncio.Event().wait()

    task = asyncio.create_task(stuck_somewhere(), name="stuck-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="exporter.web.server"):
        report_pending_tasks()
    task.cancel()
    (message,) = [r.getMessage() for r in caplog.records]
    assert "stuck-task: stuck_somewhere@test_aio.py" in message


SERVE_THEN_HANG = """
import asyncio, logging, os, signal, sys
from exporter.web.server import http_server, serve_until_signal
from starlette.applications import Starlette

logging.basicConfig(level=logging.WARNING, stream=sys.stdout)

async def main():
    async def hang():
        print("stopping", flush=True)
        await asyncio.Event().wait()
    loop = asyncio.get_running_loop()
    loop.call_later(0.5, os.kill, os.getpid(), signal.SIGTERM)
    loop.call_later(1.0, os.kill, os.getpid(), signal.SIGTERM)
    await serve_until_signal([http_server(Starlette(), "127.0.0.1:0")], before_stop=hang)

asyncio.run(main())
"""


def test_a_second_signal_exits_at_once_when_the_clean_stop_hangs():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", SERVE_THEN_HANG], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "stopping" in done.stdout
    assert "second stop signal" in done.stdout


async def test_a_step_that_must_complete_finishes_when_its_caller_is_cancelled():
    """The push processor marks applied events done this way: a stop that cancels it
    mid-write must not leave the write done but unsaid (or half done)."""
    gate, finished = asyncio.Event(), []

    async def bookkeeping() -> None:
        await gate.wait()
        finished.append(True)

    caller = asyncio.create_task(complete_even_if_cancelled(bookkeeping()))
    await asyncio.sleep(0)
    caller.cancel()
    await asyncio.sleep(0)
    assert not caller.done() and finished == []  # still waiting for the step
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert finished == [True]
