"""Keep the long-lived heap out of the cyclic garbage collector's full passes.

A gateway at 10,000 TCP meters holds a few hundred thousand long-lived objects: settings
and plans; once polling runs, one transport, protocol and buffer set per connection; and,
replaced only at the next poll of each meter (10 s, 15 min later), each meter's pending
job and its review registers. CPython's full (generation 2) collection walks every one of
them every few seconds — 50–100 ms a time at 10,000 meters (`bench/tcp_fleet.py
--experiment gc-log:10`) while the event loop stands still, so every reading polled in
that moment is late — and finds nothing ("collected 0"): these objects die by reference
count, not as cycles.

``gc.freeze()`` moves what exists into a permanent generation the collector skips; frozen
objects are still freed by reference counting the moment nothing uses them. So: freeze
after start-up, again once every bus has run its first transaction (the connections exist
then), and every ``FREEZE_EVERY_S`` after a young collection (what is frozen is what is in
use, not cycles already dead). The one thing freezing defers is reclaiming a reference
*cycle* that became garbage after it was frozen (a meter whose connection was replaced):
every ``REFREEZE_EVERY_S`` everything is unfrozen, collected in full once, and frozen
again — one pause an hour instead of one every few seconds.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
from collections.abc import Callable

log = logging.getLogger("amr.heap")

#: young-generation threshold (CPython's default is 700): see :func:`spare_young_collections`
YOUNG_THRESHOLD = 10_000
WARM_CHECK_S = 1.0        # how often to look whether every bus has polled once
WARM_CAP_S = 900.0        # freeze after this long even if some bus never answered
FREEZE_EVERY_S = 10.0     # a young collection, then freeze what survived
REFREEZE_EVERY_S = 3600.0  # a full collection of everything, then freeze again


def spare_young_collections() -> None:
    """Let the young generation grow to :data:`YOUNG_THRESHOLD` objects before a collection.

    The collector counts container objects allocated minus those freed since its last pass
    and collects the young generation past 700. Every reading's objects (its points, the
    store's row, the sinks' and the review's records) live for a few tens of milliseconds,
    long enough to be counted and not to be freed before the next pass, so at 1,000 readings/s
    the default collected the young generation about 5 times a second and the middle one
    about every other second, walking objects that reference counting frees moments later
    anyway: 0.29 s in the collector out of 10 s, about 3 % of a core and 6 % of the
    gateway's CPU (``bench/tcp_fleet.py --experiment gc-time``; 0.016 s at this threshold).
    A larger threshold lets most of them die first; it delays only the reclaiming of
    reference cycles, by at most that many objects.
    """
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def freeze_heap() -> None:
    """Collect what is garbage now, then hide every surviving object from later collections."""
    gc.collect()
    gc.freeze()


def refreeze_heap() -> None:
    """Give frozen objects back to the collector, collect everything once, freeze again."""
    gc.unfreeze()
    freeze_heap()


def freeze_young() -> None:
    """Collect the young generations (cheap), then freeze what survived them."""
    gc.collect(1)
    gc.freeze()


async def keep_heap_frozen(
    is_warm: Callable[[], bool],
    warm_within_s: float,
    *,
    check_s: float = WARM_CHECK_S,
    every_s: float = FREEZE_EVERY_S,
    full_every_s: float = REFREEZE_EVERY_S,
) -> None:
    """Freeze the heap once polling is warm (``is_warm``, or after ``warm_within_s``), then keep it frozen.

    Runs until cancelled; a task of the running gateway.
    """
    for _ in range(math.ceil(min(warm_within_s, WARM_CAP_S) / check_s)):
        if is_warm():
            break
        await asyncio.sleep(check_s)
    freeze_heap()
    log.debug("heap frozen after warm-up: %d objects permanent", gc.get_freeze_count())
    rounds_per_full = max(1, round(full_every_s / every_s))
    for round_no in itertools.count(1):
        await asyncio.sleep(every_s)
        if round_no % rounds_per_full == 0:
            refreeze_heap()
            log.debug("heap re-frozen after a full collection: %d objects permanent", gc.get_freeze_count())
        else:
            freeze_young()
