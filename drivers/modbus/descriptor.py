"""The Modbus protocol package's descriptor: what the gateway core may know of Modbus.

Found by :mod:`drivers.registry` (it walks ``drivers/*`` for ``descriptor`` modules). The
driver itself (:mod:`drivers.modbus.driver`, which pulls in the transports) is imported only
when a bus is built, so loading a configuration stays light.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from drivers.base import BusParams, ChainedReader, MeterDriver, PlanOptions, PointDef, ReadPlan
from drivers.modbus import discovery, profile_schema
from drivers.modbus.points import ModbusLimits, RegisterPoint
from drivers.modbus.units import unit_bounds
from drivers.registry import AddressError, Capabilities, ProfileSchema, ProtocolDescriptor, ProtocolVariant
from drivers.simulation.interface import MeterSimulator, SimulatedMeter
from gateway.clock import Clock
from gateway.errors import ConfigError

_UNIT_RE = re.compile(r"\d{1,3}")


def parse_address(text: str, protocol: str, plain: bool) -> str:
    """A unit id as decimal text: 1–247 on a serial line, 0–255 over ``modbus-tcp``.

    (0 and 255 address the TCP device itself; :mod:`drivers.modbus.units` holds the ranges.)
    ``plain`` does not matter: a unit id is a number however it is written.
    """
    lo, hi = unit_bounds(protocol)
    if not _UNIT_RE.fullmatch(text) or not lo <= int(text) <= hi:
        raise AddressError(f'must be a Modbus unit id between {lo} and {hi}, not "{text}"')
    return str(int(text))


def compile_plan(points: Sequence[PointDef], options: PlanOptions, protocol: str) -> ReadPlan:
    """The Modbus read plan of the register points in ``points`` within the profile's limits."""
    from drivers.modbus.plan import compile_plan as compile_modbus

    regs = [p for p in points if isinstance(p, RegisterPoint)]
    limits = options if isinstance(options, ModbusLimits) else ModbusLimits()
    return compile_modbus(regs, limits)


def check_profile(points: Sequence[PointDef], protocol: str) -> str | None:
    """Every Modbus profile serves every Modbus variant."""
    return None


def create_driver(bus: BusParams) -> MeterDriver:
    """The Modbus driver of one bus (lean engine)."""
    from drivers.modbus.driver import create_driver as create_modbus

    return create_modbus(bus)


def wire_time(bus: BusParams, plan: ReadPlan) -> float:
    """Seconds one execution of a Modbus plan occupies an RTU line at the least (registry's
    ``wire_time``): per request 8 bytes out, 5 + 2N back, a t3.5 silence (or the bus's
    ``inter_frame_s``) after each, no turnaround, and the plan's pause between requests."""
    from drivers.modbus.plan import ReadPlan as ModbusPlan
    from drivers.modbus.timing import plan_cycle_s

    if not isinstance(plan, ModbusPlan):
        raise ConfigError(f"bus {bus.id}: a Modbus bus cannot time a {type(plan).__name__}")
    return plan_cycle_s(bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, [r.count for r in plan.requests],
                        bus.inter_frame_s, plan.pause_between_requests_s)


async def serve(meters: Sequence[SimulatedMeter], clock: Clock, timezone: str) -> MeterSimulator:
    """Simulated Modbus meters (see :func:`drivers.modbus.simulator.serve`)."""
    from drivers.modbus.simulator import serve as serve_modbus

    return await serve_modbus(meters, clock, timezone)


def _chained_reads(driver: MeterDriver) -> ChainedReader:
    """A Modbus TCP bus's driver as a :class:`~drivers.base.ChainedReader`."""
    from drivers.modbus.driver import ModbusDriver

    if not isinstance(driver, ModbusDriver):
        raise TypeError(f"not a Modbus driver: {type(driver).__name__}")
    return driver


DESCRIPTOR = ProtocolDescriptor(
    family="modbus",
    title="Modbus",
    rank=0,
    variants=(
        ProtocolVariant("modbus-rtu", frozenset({"serial"}), default_baudrate=9600),
        ProtocolVariant("modbus-tcp", frozenset({"tcp"}), default_tcp_port=502, concurrent=True,
                        capabilities=Capabilities(chained_reads=_chained_reads)),
        ProtocolVariant("modbus-rtu-over-tcp", frozenset({"tcp"})),
    ),
    default_timeout_ms=1000,
    address_hint="the Modbus unit id",
    address_option="unit",
    address_metavar="N",
    parse_address=parse_address,
    profile=ProfileSchema(profile_schema.TOP_KEYS, profile_schema.parse_points),
    check_profile=check_profile,
    compile_plan=compile_plan,
    create_driver=create_driver,
    discovery=discovery.DISCOVERY,
    simulator=serve,
    wire_time=wire_time,
)
