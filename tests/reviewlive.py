"""What the live review tests share: a running gateway reading a simulated fleet on an
accelerated clock (real peers: the fleet's simulators on ptys and loopback TCP, SQLite on
disk), and the review events it stored."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.clock import ScaledClock
from gateway.model import loads_exact
from gateway.review.engine import ReviewEngine
from gateway.runtime import Gateway
from gateway.settings import Settings
from gateway.simulator.fleet import SimulatedFleet


@dataclass
class Running:
    """The running gateway, its simulated fleet, their clock and the review engine."""

    gw: Gateway
    fleet: SimulatedFleet
    clock: ScaledClock
    engine: ReviewEngine


@contextlib.asynccontextmanager
async def running_review(settings: Settings, clock: ScaledClock, seed: int) -> AsyncIterator[Running]:
    """Start the fleet, then a gateway without sinks; stop both however the block ends."""
    fleet = SimulatedFleet(settings, clock, seed=seed)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    try:
        await gw.start()
        assert gw.review is not None
        yield Running(gw, fleet, clock, gw.review)
    finally:
        await gw.stop()
        await fleet.stop()


def stored_events(db: Path, meter: str) -> list[dict[str, Any]]:
    """Every review event row of ``meter`` (type, state, key, evidence), oldest first."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT type, state, key, evidence FROM review_event WHERE meter=? ORDER BY id", (meter,))
        return [{"type": t, "state": s, "key": k, "evidence": loads_exact(e)} for t, s, k, e in rows]
    finally:
        conn.close()
