"""A clock for rehearsing billing: accelerated, but it *holds* at chosen instants.

Why: on an accelerated clock a live read of a Modbus meter takes a few real milliseconds,
which are minutes of simulated time, so a live settlement read is never exactly the
register at the boundary and a rehearsal (or a test) cannot check stage consumption to the
last digit. :class:`HoldingClock` runs like :class:`gateway.clock.ScaledClock` but stops at
each hold instant (a billing boundary): time stands still there until :meth:`release`, so
every read made while it holds sees exactly the register at the boundary, and the
settlement is ``actual`` with ``read_at == boundary``. Everything that waits on the clock
(scheduler, settlement capture, simulators) waits through a hold correctly.
"""

from __future__ import annotations

import asyncio
import bisect
import time as _time
from collections.abc import Iterable
from datetime import UTC, datetime

MAX_REAL_SLEEP_S = 0.25      # real seconds a sleeper waits before it looks at the clock again


class HoldingClock:
    """An accelerated clock that stops at every instant of ``holds`` until released."""

    def __init__(self, start: float, rate: float, holds: Iterable[float] = ()) -> None:
        if rate <= 0:
            raise ValueError("clock rate must be positive")
        self.rate = float(rate)
        self._base = float(start)
        self._mono = _time.monotonic()
        self._holds = sorted(h for h in set(holds) if h > start)
        self._held: float | None = None
        self._released = asyncio.Event()

    @property
    def holding(self) -> float | None:
        """The instant the clock stands at, or None while it runs."""
        self.time()
        return self._held

    def add_hold(self, t: float) -> None:
        """Hold at ``t`` too (ignored when the clock is already past it)."""
        if t > self.time() and t not in self._holds:
            bisect.insort(self._holds, t)

    def time(self) -> float:
        """Current simulated epoch seconds (stands still while holding)."""
        if self._held is not None:
            return self._held
        t = self._base + (_time.monotonic() - self._mono) * self.rate
        if self._holds and t >= self._holds[0]:
            self._held = self._holds.pop(0)
            self._released = asyncio.Event()
            return self._held
        return t

    def now(self) -> datetime:
        """Current simulated aware UTC datetime."""
        return datetime.fromtimestamp(self.time(), UTC)

    def set_rate(self, rate: float) -> None:
        """Run ``rate`` times faster than real time from now on (continuous, no jump)."""
        if rate <= 0:
            raise ValueError("clock rate must be positive")
        now = self.time()
        if self._held is None:
            self._base = now
            self._mono = _time.monotonic()
        self.rate = float(rate)

    def release(self) -> None:
        """Let time run again from the hold instant."""
        if self._held is None:
            return
        self._base = self._held
        self._mono = _time.monotonic()
        self._held = None
        self._released.set()

    async def sleep_until(self, epoch: float) -> None:
        """Sleep until the simulated clock reaches ``epoch`` (through holds)."""
        while True:
            now = self.time()
            if now >= epoch:
                return
            if self._held is not None:
                await self._released.wait()
                continue
            target = min(epoch, self._holds[0]) if self._holds else epoch
            # at most MAX_REAL_SLEEP_S at a time: a set_rate() meanwhile then takes effect
            # for this sleeper too (a day-long sleep begun at 600x must not outlast a 3000x run)
            await asyncio.sleep(min(MAX_REAL_SLEEP_S, max(0.0, (target - now) / self.rate)))

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of simulated time."""
        await self.sleep_until(self.time() + max(0.0, seconds))


__all__ = ["REHEARSAL_CONFIG", "HoldingClock", "rehearsal_config_text"]


REHEARSAL_CONFIG = """\
# A small site for rehearsing a billing plan on simulated meters (loopback only).
gateway:
  id: billing-rehearsal
  timezone: {timezone}
  data_dir: {data_dir}
buses:
  - {{id: tcp-m1, type: tcp, host: 127.0.0.1, port: {port_m1}, protocol: modbus-tcp, timeout_ms: {timeout_ms}}}
  - {{id: tcp-m2, type: tcp, host: 127.0.0.1, port: {port_m2}, protocol: modbus-tcp, timeout_ms: {timeout_ms}}}
  - {{id: tcp-d1, type: tcp, host: 127.0.0.1, port: {port_d1}, protocol: dlt645, timeout_ms: {timeout_ms}}}
  - {{id: tcp-d2, type: tcp, host: 127.0.0.1, port: {port_d2}, protocol: dlt645, timeout_ms: {timeout_ms}}}
meters:
  - {{id: m1, customer: C1, bus: tcp-m1, address: 1, profile: simulator, ct_ratio: 200/5, pt_ratio: 10000/100,
     schedules: [interval], billing: plan}}
  - {{id: m2, customer: C2, bus: tcp-m2, address: 1, profile: simulator, schedules: [interval], billing: plan}}
  - {{id: d1, customer: C3, bus: tcp-d1, address: "000000000001", profile: dlt645-2007, ct_ratio: 300/5,
     pt_ratio: 10000/100, schedules: [interval], billing: plan}}
  - {{id: d2, customer: C4, bus: tcp-d2, address: "000000000002", profile: dlt645-2007, ct_ratio: 150/5,
     schedules: [interval], billing: plan}}
schedules:
  interval: {{every: {every}, points: ["energy_*", "demand_*"]}}
billing:
  plan: {{cycle_day: 1, stages: [11, 21], at: "00:00", tolerance: {tolerance}, allow_estimated: {allow_estimated}}}
influxdb: {{enabled: false}}
api: {{listen: "127.0.0.1:{api_port}"}}
store: {{synchronous: NORMAL, commit_interval_ms: 20}}
"""


def rehearsal_config_text(data_dir: object, *, api_port: int, every: str = "15m", tolerance: str = "15m",
                          allow_estimated: bool = False, timeout_ms: int = 500,
                          timezone: str = "Asia/Shanghai") -> str:
    """Two Modbus TCP and two DL/T 645 TCP meters (with and without CT/PT) on a three-stage plan.

    Ports are fresh loopback ports; run :class:`gateway.simulator.fleet.SimulatedFleet` on the
    same settings to serve them.
    """
    from gateway.ports import free_port

    return REHEARSAL_CONFIG.format(
        timezone=timezone, data_dir=data_dir, port_m1=free_port(), port_m2=free_port(), port_d1=free_port(),
        port_d2=free_port(), timeout_ms=timeout_ms, every=every, tolerance=tolerance,
        allow_estimated="true" if allow_estimated else "false", api_port=api_port,
    )
