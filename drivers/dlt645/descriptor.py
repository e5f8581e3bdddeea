"""The DL/T 645 protocol package's descriptor: what the gateway core may know of DL/T 645.

Found by :mod:`drivers.registry`. DL/T 645-2007 meters (``dlt645``) keep settlement-day and
daily freeze records the billing capture reads (:class:`~drivers.base.FreezeRecordReader`)
and the last record of each event they count (:class:`~drivers.base.EventRecordReader`);
the 1997 edition's identifiers for them differ and are not implemented, so ``dlt645-1997``
does not offer that capability. Both take a broadcast time sync. The driver module is
imported only when a bus is built or a plan compiled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from drivers.base import (
    BusParams,
    ClockSetter,
    EventRecordReader,
    FreezeRecordReader,
    MeterDriver,
    PlanOptions,
    PointDef,
    ReadPlan,
)
from drivers.discovery import Discovery, Found, Progress
from drivers.dlt645 import profile_schema
from drivers.dlt645.points import DiPoint
from drivers.registry import AddressError, Capabilities, ProfileSchema, ProtocolDescriptor, ProtocolVariant
from drivers.simulation.interface import MeterSimulator, SimulatedMeter
from drivers.transport.pipe import BytePipe
from gateway.clock import Clock
from gateway.errors import ConfigError

_ADDRESS_RE = re.compile(r"\d{12}")


def parse_address(text: str, protocol: str, plain: bool) -> str:
    """The 12-digit meter address, kept as text.

    An unquoted address with leading zeros is refused: YAML (and any other tool reading the
    file) takes it as a number and drops the zeros.
    """
    if plain and text.isdigit() and text.startswith("0"):
        raise AddressError(f'{text} must be quoted ("{text}"), because YAML reads an unquoted '
                           "number with leading zeros as a different number")
    if not _ADDRESS_RE.fullmatch(text):
        raise AddressError(f'must be the 12-digit DL/T 645 address such as "123456789012", not '
                           f'"{text}"')
    return text


def compile_plan(points: Sequence[PointDef], options: PlanOptions, protocol: str) -> ReadPlan:
    """The DL/T 645 read plan of the DI points in ``points`` for the meter's edition."""
    from drivers.dlt645.plan import compile_plan as compile_dlt645

    dis = [p for p in points if isinstance(p, DiPoint)]
    return compile_dlt645(dis, protocol="dlt645-1997" if protocol == "dlt645-1997" else "dlt645")


def check_profile(points: Sequence[PointDef], protocol: str) -> str | None:
    """A 1997 meter cannot be read with a profile of 4-byte (2007) identifiers."""
    if protocol == "dlt645-1997" and any(isinstance(p, DiPoint) and p.di > 0xFFFF for p in points):
        return "uses 4-byte DL/T 645-2007 identifiers but the meter speaks dlt645-1997; choose a 1997 profile"
    return None


def create_driver(bus: BusParams) -> MeterDriver:
    """The DL/T 645 driver of one bus (serial port or TCP serial server)."""
    from drivers.dlt645.driver import create_driver as create_dlt645

    return create_dlt645(bus)


def create_driver_on(bus: BusParams, pipe: BytePipe) -> MeterDriver:
    """The DL/T 645 driver on a byte pipe its bus owns (a line shared with DL/T 698.45 meters:
    frames carry their length, replies are matched by address and DI)."""
    from drivers.dlt645.driver import Dlt645Driver

    return Dlt645Driver(bus, transport=pipe)


TD_MIN_S = 0.020
"""The shortest turnaround a DL/T 645 meter may take (§5.3: 20 ms ≤ Td ≤ 500 ms)."""
REPLY_PREAMBLE = 4
"""``FE`` bytes counted in front of a reply (meters send 0–4; the reference figures count 4)."""


def wire_time(bus: BusParams, plan: ReadPlan) -> float:
    """Seconds one execution of a DL/T 645 plan occupies a serial line at the least (registry's
    ``wire_time``): per step its read request and its normal reply (the echoed DI and the
    value bytes the step expects) as the codec frames them, at the line's character time,
    the 20 ms turnaround and the bus's ``inter_frame_s``; block steps counted as answered."""
    from drivers.dlt645.codec import di_bytes, encode_frame, encode_read
    from drivers.dlt645.driver import DEFAULT_SERIAL_GAP, PREAMBLE
    from drivers.dlt645.plan import Dlt645Plan
    from drivers.transport.serial import char_time

    if not isinstance(plan, Dlt645Plan):
        raise ConfigError(f"bus {bus.id}: a DL/T 645 bus cannot time a {type(plan).__name__}")
    tc = char_time(bus.baudrate, bus.parity, bus.stopbits, bus.bytesize)
    gap = DEFAULT_SERIAL_GAP if bus.inter_frame_s is None else bus.inter_frame_s
    total = 0.0
    for step in plan.steps:
        request = len(encode_read("000000000001", step.di, preamble=PREAMBLE, protocol=plan.protocol))
        value = step.expect if step.expect is not None else max(s.offset + s.fmt.size for s in step.slots)
        reply = len(encode_frame(bytes(6), 0x91, di_bytes(step.di, plan.protocol) + bytes(value),
                                 preamble=REPLY_PREAMBLE))
        total += (request + reply) * tc + TD_MIN_S + gap
    return total


def _dlt645_driver(driver: MeterDriver) -> FreezeRecordReader:
    from drivers.dlt645.driver import Dlt645Driver

    if not isinstance(driver, Dlt645Driver):
        raise TypeError(f"not a DL/T 645 driver: {type(driver).__name__}")
    return driver


def _event_records(driver: MeterDriver) -> EventRecordReader:
    from drivers.dlt645.driver import Dlt645Driver

    if not isinstance(driver, Dlt645Driver):
        raise TypeError(f"not a DL/T 645 driver: {type(driver).__name__}")
    return driver


def _clock(driver: MeterDriver) -> ClockSetter:
    from drivers.dlt645.driver import Dlt645Driver

    if not isinstance(driver, Dlt645Driver):
        raise TypeError(f"not a DL/T 645 driver: {type(driver).__name__}")
    return driver


def check_range(wanted: str, protocol: str) -> None:
    """``amr-gateway scan --range``, checked before the bus opens: see
    :func:`drivers.dlt645.discovery.check_range`."""
    from drivers.dlt645.discovery import check_range as check

    check(wanted, protocol)


async def scan(driver: MeterDriver, wanted: str | None, timeout: float,
               progress: Progress | None = None, found: Found | None = None) -> list[str]:
    """``amr-gateway scan``: see :data:`drivers.dlt645.discovery.DISCOVERY` (imported when used)."""
    from drivers.dlt645.discovery import DISCOVERY

    return await DISCOVERY.scan(driver, wanted, timeout, progress, found)


async def serve(meters: Sequence[SimulatedMeter], clock: Clock, timezone: str) -> MeterSimulator:
    """Simulated DL/T 645 meters (see :func:`drivers.dlt645.simulator.serve`)."""
    from drivers.dlt645.simulator import serve as serve_dlt645

    return await serve_dlt645(meters, clock, timezone)


DESCRIPTOR = ProtocolDescriptor(
    family="dlt645",
    title="DL/T 645",
    rank=10,
    variants=(
        ProtocolVariant("dlt645", frozenset({"serial", "tcp"}), default_baudrate=2400,
                        capabilities=Capabilities(freeze_records=_dlt645_driver, clock=_clock,
                                                  event_records=_event_records)),
        ProtocolVariant("dlt645-1997", frozenset({"serial", "tcp"}), default_baudrate=1200,
                        capabilities=Capabilities(clock=_clock)),
    ),
    default_timeout_ms=1500,
    address_hint="the 12-digit DL/T 645 address",
    address_option="address",
    address_metavar="12-DIGITS",
    parse_address=parse_address,
    profile=ProfileSchema(profile_schema.TOP_KEYS, profile_schema.parse_points),
    check_profile=check_profile,
    compile_plan=compile_plan,
    create_driver=create_driver,
    discovery=Discovery(label="address", scan=scan, check=check_range),
    simulator=serve,
    create_driver_on=create_driver_on,
    wire_time=wire_time,
)
