"""The polling core of one running gateway: what every feature builds on.

Built by the composition root (:mod:`gateway.runtime`) once per runtime, after the store is
open: the settings it was built from, the clock, the store, every meter's compiled plans,
one worker per bus, and the list of reading observers the workers call for every reading
before it is committed. Features (billing, review, sinks) receive this object and nothing
larger, so they never see the API, the command line or each other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gateway.clock import Clock
from gateway.polling import BusWorker, MeterRuntime, ReadingObserver
from gateway.settings import Settings
from gateway.store import Store

EventSink = Callable[[str, str, str, float, str, dict[str, object]], Awaitable[None]]
"""Raise one review event: (meter, type, key, ts, message, evidence)."""


@dataclass(slots=True)
class Core:
    """Settings, clock, store, meters, bus workers and reading observers of one runtime."""

    settings: Settings
    clock: Clock
    store: Store
    meters: dict[str, MeterRuntime] = field(default_factory=dict)
    workers: dict[str, BusWorker] = field(default_factory=dict)
    #: Called by every bus worker for every reading, before it is committed; never raise.
    observers: list[ReadingObserver] = field(default_factory=list)
    #: Where a feature raises a review event no reading rule decides (billing's
    #: ``freeze_mismatch``, ``negative``): (meter, type, key, ts, message, evidence). The review
    #: engine adds itself; without one the event is only logged by the feature.
    event_sinks: list[EventSink] = field(default_factory=list)


__all__ = ["Core", "EventSink"]
