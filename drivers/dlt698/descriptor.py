"""The DL/T 698.45 protocol package's descriptor: what the gateway core may know of it.

Found by :mod:`drivers.registry`. 698.45 meters keep settlement-day (5005) and day (5004)
freeze records read by freeze time, so the variant offers
:class:`~drivers.base.FreezeRecordReader`; it also counts its events
(:class:`~drivers.base.EventCounterReader`). The driver module is imported only when a bus
is built or a plan compiled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import tzinfo

from drivers.base import BusParams, EventCounterReader, FreezeRecordReader, MeterDriver, PlanOptions, PointDef, ReadPlan
from drivers.discovery import Discovery, Found, MeterFacts, Progress
from drivers.dlt698 import profile_schema
from drivers.dlt698.catalogue import OadPoint
from drivers.registry import AddressError, Capabilities, ProfileSchema, ProtocolDescriptor, ProtocolVariant
from drivers.simulation.interface import MeterSimulator, SimulatedMeter
from drivers.transport.pipe import BytePipe
from gateway.clock import Clock

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


def _events(driver: MeterDriver) -> EventCounterReader:
    from drivers.dlt698.driver import Dlt698Driver

    if not isinstance(driver, Dlt698Driver):
        raise TypeError(f"not a DL/T 698.45 driver: {type(driver).__name__}")
    return driver


def _freezes(driver: MeterDriver) -> FreezeRecordReader:
    from drivers.dlt698.driver import Dlt698Driver

    if not isinstance(driver, Dlt698Driver):
        raise TypeError(f"not a DL/T 698.45 driver: {type(driver).__name__}")
    return driver


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
                        capabilities=Capabilities(freeze_records=_freezes, event_counters=_events)),
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
    discovery=Discovery(label="address", scan=scan, describe=describe),
    simulator=serve,
    create_driver_on=create_driver_on,
)
