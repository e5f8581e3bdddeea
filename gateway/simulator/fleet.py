"""Simulated meters for every bus of a configuration: ``amr-gateway simulate`` and the demo.

The configuration a gateway runs with also describes what to simulate: each TCP bus is
served on its own loopback port, each serial bus on a pseudo-terminal that is linked at the
bus's ``port`` path (like ``socat``'s ``link=``; a bus whose meters speak several protocols gets
one pty joining every protocol's simulator, :mod:`drivers.simulation.rs485_hub`), so ``amr-gateway simulate -c F`` and
``amr-gateway run -c F`` with the same file rehearse a whole site on one machine. Only
loopback TCP endpoints are served. Every meter's registers come from a deterministic
:class:`~drivers.simulation.model.MeterModel` seeded from (seed, meter id), with the meter's
own CT and PT, so a test can compute what any meter shows at any instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import zlib
from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from pathlib import Path

from drivers import registry
from drivers.simulation.faults import FAULTS
from drivers.simulation.interface import MeterSimulator, SimulatedMeter
from drivers.simulation.model import MeterModel
from drivers.simulation.rs485_hub import Rs485Hub
from gateway.aio import wait_event
from gateway.clock import Clock, ScaledClock
from gateway.errors import ConfigError
from gateway.settings import BusSettings, MeterSettings, Settings

log = logging.getLogger("amr.sim")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def meter_seed(seed: int, meter_id: str) -> int:
    """A stable per-meter seed, so every run simulates the same meter the same way."""
    return zlib.crc32(f"{seed}:{meter_id}".encode())


def base_kw_for(meter: MeterSettings, seed: int) -> float:
    """A plausible primary-side load: 20–120 kW seeded, scaled up for high-voltage metering.

    A meter behind 10 kV PTs and 200/5 CTs (multiplier 4000) measures megawatts, not the
    kilowatts of a low-voltage meter, so the load grows with the multiplier.
    """
    scale = max(1.0, float(meter.multiplier) / 40.0)
    return (20.0 + (meter_seed(seed, meter.id) % 100)) * scale


class SimulatedFleet:
    """Starts and stops the simulators for a configuration's buses."""

    def __init__(self, settings: Settings, clock: Clock | None = None, seed: int = 1,
                 holidays: frozenset[date] = frozenset()) -> None:
        self.settings = settings
        #: public holidays the meters' load follows (0.4 × load; empty: none, the default)
        self.holidays = holidays
        self.clock: Clock = clock if clock is not None else ScaledClock()
        self.seed = seed
        self.tz = settings.gateway.timezone
        self._simulators: list[MeterSimulator] = []
        self._links: list[Path] = []
        self._owner: dict[str, MeterSimulator] = {}
        self._hubs: list[Rs485Hub] = []

    def _meters_on(self, bus: BusSettings) -> list[MeterSettings]:
        return [m for m in self.settings.meters.values() if m.bus == bus.id]

    async def start(self) -> None:
        """Serve every bus; link serial buses' ports to their ptys."""
        by_family: dict[str, list[SimulatedMeter]] = {}
        lines: dict[str, dict[str, BusSettings]] = {}
        for bus in self.settings.buses.values():
            meters = self._meters_on(bus)
            if not meters:
                continue
            if bus.type == "tcp" and bus.host not in LOOPBACK:
                log.warning("bus %s: %s is not a loopback address; not simulated", bus.id, bus.host)
                continue
            for m in meters:
                protocol = registry.meter_protocol(bus, m.protocol)
                family = registry.descriptor_for(protocol).family
                by_family.setdefault(family, []).append(SimulatedMeter(
                    id=m.id, protocol=protocol, address=m.address, line=bus.id,
                    link="tcp" if bus.type == "tcp" else "serial",
                    profile=self.settings.profiles[m.profile], seed=meter_seed(self.seed, m.id),
                    base_kw=base_kw_for(m, self.seed), ct=m.ct_ratio.factor, pt=m.pt_ratio.factor,
                    port=bus.tcp_port if bus.type == "tcp" else None,
                ))
                if bus.type == "serial":
                    lines.setdefault(family, {})[bus.id] = bus
        serial_lines: dict[str, BusSettings] = {}
        for descriptor in registry.descriptors():   # each protocol's meters to its simulator
            family = descriptor.family
            if family not in by_family:
                continue
            simulator = await descriptor.simulator(by_family[family], self.clock, self.tz)
            self._simulators.append(simulator)
            for meter in by_family[family]:
                self._owner[meter.id] = simulator
            serial_lines.update(lines.get(family, {}))
        if self.holidays:
            for meter_id in self._owner:
                self.model(meter_id).use_holidays(self.holidays)
        for bus_id, bus in serial_lines.items():
            ptys = list(dict.fromkeys(str(self.endpoint(m.id)) for m in self._meters_on(bus)))
            target = ptys[0]
            if len(ptys) > 1:               # a mixed bus: one pair for every protocol's meters
                hub = Rs485Hub(ptys)
                self._hubs.append(hub)
                target = hub.start()
            self._link(Path(str(bus.port)), target, bus_id)
            if bus.parity != "N":
                log.warning("bus %s: parity %s on a simulated line: a pseudo-terminal may refuse even or odd "
                            "parity (EINVAL) when the gateway or `amr-gateway read` opens %s; set parity: N on "
                            "this bus while it is simulated", bus_id, bus.parity, bus.port)

    def _link(self, link: Path, target: str, bus_id: str) -> None:
        if link.exists() and not link.is_symlink():
            raise ConfigError(f"bus {bus_id}: {link} exists and is not a link; the simulator will not "
                              "replace a real serial port (point the bus at a free path)")
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, link)
        self._links.append(link)
        log.info("bus %s simulated on %s -> %s", bus_id, link, target)

    def endpoint(self, meter_id: str) -> str | tuple[str, int]:
        """A pty path, or (host, port), where the meter answers."""
        return self._owner[meter_id].serves_at(meter_id)

    def model(self, meter_id: str) -> MeterModel:
        """The meter's deterministic model (what it shows at any instant)."""
        return self._owner[meter_id].model(meter_id)

    async def stop_meter(self, meter_id: str) -> None:
        """Take one meter offline (it stops answering)."""
        await self._owner[meter_id].stop_meter(meter_id)

    async def start_meter(self, meter_id: str) -> None:
        """Bring a meter back."""
        await self._owner[meter_id].start_meter(meter_id)

    async def set_fault(self, meter_id: str, name: str, amount: Decimal | float | None = None) -> None:
        """Switch a fault on now (:mod:`drivers.simulation.faults`; ``silent`` stops the meter)."""
        if name == "silent":
            await self.stop_meter(meter_id)
        self.model(meter_id).set_fault(name, self.clock.time(), amount)

    async def clear_fault(self, meter_id: str, name: str) -> None:
        """Switch a fault off now (``silent``: the meter answers again)."""
        self.model(meter_id).clear_fault(name, self.clock.time())
        if name == "silent":
            await self.start_meter(meter_id)

    async def apply_faults(self, faults: Sequence[str]) -> None:
        """Switch on faults given as ``METER:FAULT[:AMOUNT]`` (``amr-gateway simulate --fault``)."""
        for text in faults:
            meter, _, rest = text.partition(":")
            name, _, amount = rest.partition(":")
            if meter not in self._owner or name not in FAULTS:
                raise ConfigError(f"--fault {text!r}: give METER:FAULT[:AMOUNT] with a simulated meter and "
                                  f"one of {', '.join(FAULTS)}")
            await self.set_fault(meter, name, Decimal(amount) if amount else None)

    async def stop(self) -> None:
        """Stop every simulator and remove the serial links."""
        for hub in self._hubs:
            hub.stop()
        self._hubs.clear()
        for simulator in self._simulators:
            await simulator.stop()
        for link in self._links:
            with contextlib.suppress(OSError):
                if link.is_symlink():
                    link.unlink()
        self._links.clear()


async def run_simulator(settings: Settings, *, seed: int, clock_start: float | None, clock_rate: float,
                        duration: float | None, faults: Sequence[str] = ()) -> int:
    """``amr-gateway simulate``: serve until Ctrl-C or ``duration`` seconds."""
    import signal

    clock = ScaledClock(clock_start, clock_rate)
    fleet = SimulatedFleet(settings, clock, seed)
    await fleet.start()
    await fleet.apply_faults(faults)
    for m in settings.meters.values():
        try:
            where = fleet.endpoint(m.id)
        except KeyError:
            continue
        where_text = where if isinstance(where, str) else f"{where[0]}:{where[1]}"
        print(f"{m.id:<20} {m.profile:<16} address {m.address:<14} at {where_text}", flush=True)
    print("simulating; press Ctrl-C to stop", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if duration is None:
            await stop.wait()
        else:
            await wait_event(stop, duration)
    finally:
        await fleet.stop()
    return 0
