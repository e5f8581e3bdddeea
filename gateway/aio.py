"""Asyncio helpers that stay correct under cancellation on Python 3.11.

On 3.11, ``asyncio.wait_for(event.wait(), t)`` loses a cancellation that arrives while the
awaited event is being set (the inner wait completes, ``wait_for`` returns its result and
the ``CancelledError`` is dropped; fixed in 3.12). A loop that waits that way at a high
rate — a sink woken for every commit, a queue fed 1,000 times a second — then survives
``task.cancel()`` and the gateway never finishes stopping (seen in the TCP-fleet bench:
SIGINT ignored under load). :func:`wait_event` uses ``asyncio.timeout`` instead, which
creates no inner task and re-raises an outside cancellation, and is cheaper too.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; True when it was set."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


__all__ = ["wait_event"]
