"""What a protocol's simulator is given and what it offers: one shape for every protocol.

The fleet (``gateway/simulator/fleet.py``) turns a configuration into
:class:`SimulatedMeter` descriptions and hands each protocol's meters to that protocol's
:data:`SimulatorFactory` (``drivers/<protocol>/simulator.py``: ``serve``). The factory
starts serving and returns a :class:`MeterSimulator`, through which the fleet finds each
meter's endpoint, its :class:`~drivers.simulation.model.MeterModel`, and takes meters off
the air and back. So a new protocol's simulator plugs into ``amr-gateway simulate``, the
demo and the tests without the fleet knowing its name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal, Protocol

from drivers.simulation.model import MeterModel
from gateway.clock import Clock


class PointMap(Protocol):
    """Anything that carries a profile's points by canonical name (a loaded profile does)."""

    @property
    def points(self) -> Mapping[str, object]:
        """Canonical point name → the protocol's point description (register, DI, ...)."""
        ...


@dataclass(frozen=True, slots=True)
class SimulatedMeter:
    """One meter of a configuration to simulate, in terms every protocol understands.

    ``protocol`` is the meter's protocol as configured (the meter's own or its bus's);
    meters with the same ``line`` (the bus id) share one pty (``link: serial``) or one
    loopback TCP port (``link: tcp``, on ``port``; 0 or None picks a free one).
    """

    id: str
    protocol: str
    address: str
    line: str
    link: Literal["serial", "tcp"]
    profile: PointMap
    seed: int
    base_kw: float
    ct: Decimal = Decimal(1)
    pt: Decimal = Decimal(1)
    port: int | None = None

    @property
    def multiplier(self) -> Decimal:
        """CT factor × PT factor (the meter shows secondary values)."""
        return self.ct * self.pt


Endpoint = str | tuple[str, int]
"""Where a simulated meter answers: a pty path, or a (host, port) on loopback."""


class MeterSimulator(Protocol):
    """A running protocol simulator, as the fleet drives it."""

    def serves_at(self, meter_id: str) -> Endpoint:
        """Where ``meter_id`` answers (a pty path, or (host, port))."""
        ...

    def model(self, meter_id: str) -> MeterModel:
        """The meter's deterministic model (what it shows at any instant)."""
        ...

    async def stop_meter(self, meter_id: str) -> None:
        """Take one meter off the air (it stops answering)."""
        ...

    async def start_meter(self, meter_id: str) -> None:
        """Bring a stopped meter back."""
        ...

    async def stop(self) -> None:
        """Stop serving every meter (safe to repeat)."""
        ...


SimulatorFactory = Callable[[Sequence[SimulatedMeter], Clock, str], Awaitable[MeterSimulator]]
"""``serve(meters, clock, timezone)``: start serving ``meters`` and return the simulator.

``clock`` drives the meters' registers (a scaled clock for accelerated time); ``timezone``
is the meters' local zone (tariff hours, daily freezes).
"""
