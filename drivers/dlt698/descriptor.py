"""The DL/T 698.45 protocol package's descriptor: what the gateway core may know of it.

Found by :mod:`drivers.registry`. 698.45 meters keep settlement-day (5005) and day (5004)
freeze records read by freeze time, so the variant offers
:class:`~drivers.base.FreezeRecordReader`; it also counts its events
(:class:`~drivers.base.EventCounterReader`) and keeps their last records
(:class:`~drivers.base.EventRecordReader`). The driver module is imported only when a bus
is built or a plan compiled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import tzinfo

from drivers.base import (
    BusParams,
    EventCounterReader,
    EventRecordReader,
    FreezeRecordReader,
    MeterDriver,
    PlanOptions,
    PointDef,
    ReadPlan,
)
from drivers.discovery import Discovery, Found, MeterFacts, Progress
from drivers.dlt698 import profile_schema
from drivers.dlt698.catalogue import OadPoint
from drivers.registry import AddressError, Capabilities, ProfileSchema, ProtocolDescriptor, ProtocolVariant
from drivers.simulation.interface import MeterSimulator, SimulatedMeter
from drivers.transport.pipe import BytePipe
from gateway.clock import Clock
from gateway.errors import ConfigError

_ADDRESS_RE = re.compile(r"\d{12}")


def parse_address(text: str, protocol: str, plain: bool) -> str:
    """The 12-digit server address as written on the nameplate, kept as text."""
    if plain and text.isdigit() and text.startswith("0"):
        raise AddressError(f'{text} must be quoted ("{text}"), because YAML reads an unquoted '
                           "number with leading zeros as a different number")
    if not _ADDRESS_RE.fullmatch(text):
        raise AddressError(f'must be the 12-digit DL/T 698.45 server address such as "000039200933", '
                           f'not "{text}"')
    return text


def compile_plan(points: Sequence[PointDef], options: PlanOptions, protocol: str) -> ReadPlan:
    """The NormalList plan of the OAD points in ``points``."""
    from drivers.dlt698.plan import compile_plan as compile_dlt698

    return compile_dlt698([p for p in points if isinstance(p, OadPoint)])


def check_profile(points: Sequence[PointDef], protocol: str) -> str | None:
    """Every point of a dlt698 profile is an OAD point."""
    if not any(isinstance(p, OadPoint) for p in points):
        return "has no DL/T 698.45 OAD points"
    return None


def create_driver(bus: BusParams) -> MeterDriver:
    """The DL/T 698.45 driver of one bus (serial port or TCP serial server)."""
    from drivers.dlt698.driver import create_driver as create_dlt698

    return create_dlt698(bus)


def create_driver_on(bus: BusParams, pipe: BytePipe) -> MeterDriver:
    """The DL/T 698.45 driver on a byte pipe its bus owns (a line shared with other protocols:
    its frames carry their length and its replies are matched by address, client and PIID)."""
    from drivers.dlt698.driver import Dlt698Driver

    return Dlt698Driver(bus, pipe=pipe)


TD_MIN_S = 0.020
"""The meter turnaround counted per request (DL/T 698.45 states none; DL/T 645's 20 ms floor)."""
REPLY_PREAMBLE = 4
"""``FE`` bytes counted in front of a reply."""
DATA_BYTES = 5
"""A result's Data when its type has no fixed size: a double-long-unsigned (type + 4 bytes)."""


def wire_time(bus: BusParams, plan: ReadPlan) -> float:
    """Seconds one execution of a DL/T 698.45 plan occupies a serial line at the least
    (registry's ``wire_time``): per batch its GET-Request-NormalList as the driver frames it
    (6-byte server address) and a GET-Response-NormalList with one Data per OAD (the size of
    the point's first accepted fixed-size type, else :data:`DATA_BYTES`), at the line's
    character time, the turnaround :data:`TD_MIN_S` and the bus's ``inter_frame_s``."""
    from drivers.dlt698.apdu import GetNormalList, encode_request
    from drivers.dlt698.axdr import INTEGER_TYPES, encode_count
    from drivers.dlt698.driver import CLIENT, PREAMBLE
    from drivers.dlt698.frame import C_REQUEST, C_RESPONSE, ServerAddress, encode_frame
    from drivers.dlt698.plan import Dlt698Plan
    from drivers.transport.serial import char_time

    if not isinstance(plan, Dlt698Plan):
        raise ConfigError(f"bus {bus.id}: a DL/T 698.45 bus cannot time a {type(plan).__name__}")
    data: dict[int, int] = {}
    for p in plan.points:
        fixed = INTEGER_TYPES.get(p.types[0]) if p.types else None
        data.setdefault(p.oad, DATA_BYTES if fixed is None else 1 + fixed[0])
    tc = char_time(bus.baudrate, bus.parity, bus.stopbits, bus.bytesize)
    gap = 0.0 if bus.inter_frame_s is None else bus.inter_frame_s
    server = ServerAddress.single("000000000001")
    total = 0.0
    for batch in plan.batches:
        request = len(encode_frame(C_REQUEST, server, CLIENT, encode_request(GetNormalList(0, batch)),
                                   preamble=PREAMBLE))
        # 85 02 PIID count, per OAD: OAD (4), Data choice (1), Data; follow report, time tag
        apdu = 3 + len(encode_count(len(batch))) + sum(5 + data[o] for o in batch) + 2
        reply = len(encode_frame(C_RESPONSE, server, CLIENT, bytes(apdu), preamble=REPLY_PREAMBLE))
        total += (request + reply) * tc + TD_MIN_S + gap
    return total


def _events(driver: MeterDriver) -> EventCounterReader:
    from drivers.dlt698.driver import Dlt698Driver

    if not isinstance(driver, Dlt698Driver):
        raise TypeError(f"not a DL/T 698.45 driver: {type(driver).__name__}")
    return driver


def _event_records(driver: MeterDriver) -> EventRecordReader:
    from drivers.dlt698.driver import Dlt698Driver

    if not isinstance(driver, Dlt698Driver):
        raise TypeError(f"not a DL/T 698.45 driver: {type(driver).__name__}")
    return driver


def _freezes(driver: MeterDriver) -> FreezeRecordReader:
    from drivers.dlt698.driver import Dlt698Driver

    if not isinstance(driver, Dlt698Driver):
        raise TypeError(f"not a DL/T 698.45 driver: {type(driver).__name__}")
    return driver


def check_range(wanted: str, protocol: str) -> None:
    """``amr-gateway scan --range``, checked before the bus opens: see
    :func:`drivers.dlt698.discovery.check_range`."""
    from drivers.dlt698.discovery import check_range as check

    check(wanted, protocol)


async def scan(driver: MeterDriver, wanted: str | None, timeout: float,
               progress: Progress | None = None, found: Found | None = None) -> list[str]:
    """``amr-gateway scan``: see :data:`drivers.dlt698.discovery.DISCOVERY`."""
    from drivers.dlt698.discovery import DISCOVERY

    return await DISCOVERY.scan(driver, wanted, timeout, progress, found)


async def describe(driver: MeterDriver, address: str, timeout: float, tz: tzinfo) -> MeterFacts:
    """``amr-gateway scan``'s look at a found meter: see :func:`drivers.dlt698.discovery.describe`."""
    from drivers.dlt698.discovery import describe as describe_dlt698

    return await describe_dlt698(driver, address, timeout, tz)


async def serve(meters: Sequence[SimulatedMeter], clock: Clock, timezone: str) -> MeterSimulator:
    """Simulated DL/T 698.45 meters (see :func:`drivers.dlt698.simulator.serve`)."""
    from drivers.dlt698.simulator import serve as serve_dlt698

    return await serve_dlt698(meters, clock, timezone)


DESCRIPTOR = ProtocolDescriptor(
    family="dlt698",
    title="DL/T 698.45",
    rank=20,
    variants=(
        ProtocolVariant("dlt698", frozenset({"serial", "tcp"}), default_baudrate=9600,
                        capabilities=Capabilities(freeze_records=_freezes, event_counters=_events,
                                                  event_records=_event_records)),
    ),
    default_timeout_ms=1500,
    address_hint="the 12-digit DL/T 698.45 address",
    address_option="address",
    address_metavar="12-DIGITS",
    parse_address=parse_address,
    profile=ProfileSchema(profile_schema.TOP_KEYS, profile_schema.parse_points),
    check_profile=check_profile,
    compile_plan=compile_plan,
    create_driver=create_driver,
    discovery=Discovery(label="address", scan=scan, describe=describe, check=check_range),
    simulator=serve,
    create_driver_on=create_driver_on,
    wire_time=wire_time,
)
