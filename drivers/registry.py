"""The protocol registry: every installed protocol package and its typed descriptor.

Why: the gateway core (configuration, profiles, polling, billing, CLI) must never name a
protocol, so that a new protocol lands in its own package. Each package under ``drivers/``
that speaks a meter protocol has a ``descriptor`` module defining ``DESCRIPTOR``, a
:class:`ProtocolDescriptor`; this module finds them by walking the ``drivers`` package
(:func:`descriptors`), with no list of protocols anywhere else. The core asks this module
which protocols exist, what their configuration accepts, how to compile a plan, how to build
a driver, and which capabilities a protocol offers (:class:`Capabilities`, typed views of a
driver — never ``hasattr``).

Lookups of a name no package serves raise :class:`~gateway.errors.ConfigError` naming the
installed protocols. See ``drivers/README.md`` ("Adding a protocol") for what a package writes.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import yaml

import drivers
from drivers.base import (
    BusParams,
    BusType,
    ChainedReader,
    ClockSetter,
    EventCounterReader,
    EventRecordReader,
    FreezeRecordReader,
    MeterDriver,
    PlanOptions,
    PointDef,
    ReadPlan,
)
from drivers.discovery import Discovery
from drivers.simulation.interface import SimulatorFactory
from drivers.transport.pipe import BytePipe
from gateway.errors import ConfigError
from gateway.yamlpos import Issues, MapView

DESCRIPTOR_MODULE = "descriptor"
"""The module a protocol package defines ``DESCRIPTOR`` in: ``drivers/<name>/descriptor.py``."""


class AddressError(ValueError):
    """A meter address the protocol cannot use; the message completes "address ..."."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a protocol can be asked beyond reading points, as typed views of its driver.

    Each field is None when the protocol does not offer that capability, else a function that
    returns the driver (built by this protocol's factory) as that capability's Protocol.
    Reading points (:class:`~drivers.base.MeterDriver`) is every protocol's.
    """

    freeze_records: Callable[[MeterDriver], FreezeRecordReader] | None = None
    clock: Callable[[MeterDriver], ClockSetter] | None = None
    event_counters: Callable[[MeterDriver], EventCounterReader] | None = None
    event_records: Callable[[MeterDriver], EventRecordReader] | None = None
    chained_reads: Callable[[MeterDriver], ChainedReader] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The offered capabilities by name (for docs and ``--help``)."""
        offered = [("read_points", True), ("freeze_records", self.freeze_records is not None),
                   ("clock", self.clock is not None), ("event_counters", self.event_counters is not None),
                   ("event_records", self.event_records is not None),
                   ("chained_reads", self.chained_reads is not None)]
        return tuple(n for n, on in offered if on)


@dataclass(frozen=True, slots=True)
class ProtocolVariant:
    """One protocol name a package serves (``modbus-tcp``, ``dlt645-1997``) and its particulars.

    ``transports``: the bus types it rides. ``default_baudrate``: on a serial bus when the
    configuration gives none. ``default_tcp_port``: on a TCP bus when none is given (None:
    the port is required, as for a serial server). ``concurrent``: a TCP bus of this protocol
    may run several transactions at once (``concurrency``). ``capabilities``: see
    :class:`Capabilities` (a variant may offer less than its family, e.g. no freeze records).
    """

    name: str
    transports: frozenset[BusType]
    default_baudrate: int = 9600
    default_tcp_port: int | None = None
    concurrent: bool = False
    capabilities: Capabilities = field(default_factory=Capabilities)


ParsePoints = Callable[[MapView, yaml.Node, Issues, "ProfileRules"], tuple[dict[str, PointDef], PlanOptions]]
"""A profile's point parser: (profile top mapping, its ``points`` node, issues, the core's
point-name rules) → (points by name, plan options such as Modbus request limits)."""


class ProfileRules(Protocol):
    """The core's rules for any profile point, handed to a protocol's point parser.

    The canonical point names and units belong to the gateway (gateway/profiles.py), not to a protocol;
    the profile loader passes an instance so a parser checks names and units the same way
    for every protocol without importing the core.
    """

    def point_name_ok(self, issues: Issues, key_node: yaml.Node, name: str) -> bool:
        """True for a canonical name or a vendor extra; else record an issue and say False."""
        ...

    def unit(self, m: MapView, name: str) -> str:
        """The point's unit: the canonical one (a different one given is an issue) or its own."""
        ...


@dataclass(frozen=True, slots=True)
class ProfileSchema:
    """What a protocol's profile file (``protocol: <family>``) holds besides the common keys.

    ``top_keys``: the keys accepted at the top of the profile (``name``, ``protocol``,
    ``description``, ``defaults``, ``points`` and the protocol's own, e.g. ``limits``).
    ``parse_points``: see :data:`ParsePoints`.
    """

    top_keys: tuple[str, ...]
    parse_points: ParsePoints


@dataclass(frozen=True, slots=True)
class ProtocolDescriptor:
    """Everything the core needs to know of one protocol package.

    * ``family``: the package's name and the ``protocol:`` value of its profiles.
    * ``title``: the human name (``DL/T 645``) for help texts.
    * ``rank``: listing order in messages and ``--help`` (lower first, then by family).
    * ``variants``: the protocol names buses and meters may give, see :class:`ProtocolVariant`.
    * ``default_timeout_ms``: the bus reply timeout when the configuration gives none.
    * ``address_hint``: what a meter address is (``the Modbus unit id``), for messages.
    * ``address_option``, ``address_metavar``: the ``amr-gateway read`` option that gives an
      ad hoc meter's address (``unit``: ``--unit N``).
    * ``parse_address(text, protocol, plain)``: the meter address as the driver takes it
      (normalised text), or :class:`AddressError`; ``plain`` is True when the YAML value was
      unquoted (so a number with leading zeros lost them).
    * ``profile``: the point schema of its profiles (:class:`ProfileSchema`).
    * ``check_profile(points, protocol)``: why a profile cannot serve a meter speaking
      ``protocol`` (a sentence), or None.
    * ``compile_plan(points, options, protocol)``: the pure plan compiler (ConfigError for
      what no request can read).
    * ``create_driver(bus)``: the driver for one bus.
    * ``discovery``: ``amr-gateway scan``'s search and what it lists (``unit id``), see
      :class:`drivers.discovery.Discovery`.
    * ``simulator``: the factory of its simulated meters (``amr-gateway simulate``, the demo,
      the tests), see :data:`drivers.simulation.interface.SimulatorFactory`.
    * ``create_driver_on(bus, pipe)``: the driver for one bus on a byte pipe the bus already
      owns, so its meters can share a serial line with meters of other protocols (a mixed
      RS-485 bus, :func:`create_bus_drivers`); None when the protocol cannot share a line
      (its framing needs the line to itself, as Modbus RTU's silences do).
    * ``wire_time(bus, plan)``: the least time, in seconds, one execution of ``plan`` (this
      protocol's own) occupies the serial line ``bus`` — every request and reply on the wire
      at the bus's framing, plus the silences and the meter turnaround the protocol owes —
      so the core can tell how far a bus is from its physical limit (:func:`wire_time`);
      None when the protocol cannot say.
    """

    family: str
    title: str
    rank: int
    variants: tuple[ProtocolVariant, ...]
    default_timeout_ms: float
    address_hint: str
    address_option: str
    address_metavar: str
    parse_address: Callable[[str, str, bool], str]
    profile: ProfileSchema
    check_profile: Callable[[Sequence[PointDef], str], str | None]
    compile_plan: Callable[[Sequence[PointDef], PlanOptions, str], ReadPlan]
    create_driver: Callable[[BusParams], MeterDriver]
    discovery: Discovery
    simulator: SimulatorFactory
    create_driver_on: Callable[[BusParams, BytePipe], MeterDriver] | None = None
    wire_time: Callable[[BusParams, ReadPlan], float] | None = None

    def variant(self, protocol: str) -> ProtocolVariant:
        """The variant called ``protocol`` (ConfigError when this package does not serve it)."""
        for v in self.variants:
            if v.name == protocol:
                return v
        raise ConfigError(f"{self.title} does not serve protocol {protocol!r}; use one of "
                          f"{', '.join(v.name for v in self.variants)}")


def _discover() -> Iterable[ProtocolDescriptor]:
    for info in pkgutil.iter_modules(drivers.__path__, prefix=f"{drivers.__name__}."):
        if not info.ispkg:
            continue
        name = f"{info.name}.{DESCRIPTOR_MODULE}"
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue            # a shared package (transports ...), not a protocol
            raise
        descriptor = module.DESCRIPTOR
        if not isinstance(descriptor, ProtocolDescriptor):
            raise TypeError(f"{name}.DESCRIPTOR is not a ProtocolDescriptor")
        yield descriptor


@functools.cache
def descriptors() -> tuple[ProtocolDescriptor, ...]:
    """Every installed protocol, in listing order (found once, by walking ``drivers/``)."""
    found = sorted(_discover(), key=lambda d: (d.rank, d.family))
    seen: dict[str, str] = {}
    for d in found:
        for v in d.variants:
            if v.name in seen:
                raise RuntimeError(f"protocol {v.name!r} is served by both {seen[v.name]} and {d.family}")
            seen[v.name] = d.family
    return tuple(found)


@functools.cache
def _by_protocol() -> Mapping[str, ProtocolDescriptor]:
    return {v.name: d for d in descriptors() for v in d.variants}


def protocol_names(bus_type: BusType | None = None) -> tuple[str, ...]:
    """Every protocol name installed (riding ``bus_type`` when given), in listing order."""
    return tuple(v.name for d in descriptors() for v in d.variants
                 if bus_type is None or bus_type in v.transports)


def families() -> tuple[str, ...]:
    """Every protocol family (profile ``protocol:`` value) installed, in listing order."""
    return tuple(d.family for d in descriptors())


def descriptor_for(protocol: str) -> ProtocolDescriptor:
    """The descriptor serving ``protocol``; ConfigError naming the installed ones otherwise."""
    found = _by_protocol().get(protocol)
    if found is None:
        raise ConfigError(f"no installed protocol is called {protocol!r}; the installed ones are "
                          f"{', '.join(protocol_names())}")
    return found


def family(name: str) -> ProtocolDescriptor:
    """The descriptor of the family ``name`` (a profile's ``protocol:``); ConfigError otherwise."""
    for d in descriptors():
        if d.family == name:
            return d
    raise ConfigError(f"no installed protocol family is called {name!r}; the installed ones are "
                      f"{', '.join(families())}")


def variant(protocol: str) -> ProtocolVariant:
    """The variant called ``protocol`` (ConfigError naming the installed ones otherwise)."""
    return descriptor_for(protocol).variant(protocol)


def meter_protocol(bus: BusParams, override: str | None) -> str:
    """The protocol a meter speaks: its own override, else its bus's."""
    return override or bus.protocol


def create_driver(bus: BusParams) -> MeterDriver:
    """A driver bound to ``bus``, built by the package serving ``bus.protocol``."""
    return descriptor_for(bus.protocol).create_driver(bus)


def shares_line(protocol: str) -> bool:
    """True when meters speaking ``protocol`` can sit on one serial line with meters of other
    protocols (its package builds a driver on a byte pipe the bus owns)."""
    return descriptor_for(protocol).create_driver_on is not None


def create_bus_drivers(bus: BusParams, protocols: Iterable[str]) -> dict[str, MeterDriver]:
    """The drivers of one bus, by the protocol of its meters (``protocols``; the bus's own is
    always there).

    Meters of the bus's own family share the bus's driver, as they always did. When some speak
    another family (a mixed RS-485 line: DL/T 645 and DL/T 698.45 meters on one pair), the bus
    opens one byte pipe (:mod:`drivers.transport`) with the bus's line settings, and every
    protocol gets its own driver on that pipe: each meter is read in its own framing, one
    transaction at a time, with the one timing of the line. ConfigError when a protocol
    cannot share a line or the bus is not a serial line.
    """
    own = descriptor_for(bus.protocol)
    wanted = {bus.protocol, *protocols}
    foreign = sorted(p for p in wanted if descriptor_for(p) is not own)
    if not foreign:
        driver = create_driver(bus)
        return {p: driver for p in wanted}
    if bus.type != "serial":
        raise ConfigError(f"bus {bus.id}: meters of {', '.join(foreign)} on a {bus.protocol} bus need a "
                          "serial line they share; a tcp bus speaks one protocol")
    refusing = [p for p in sorted(wanted) if not shares_line(p)]
    if refusing:
        raise ConfigError(f"bus {bus.id}: {', '.join(refusing)} cannot share a serial line with other "
                          "protocols; give those meters a bus of their own")
    pipe = _line_pipe(bus)
    out: dict[str, MeterDriver] = {}
    own_driver = _on_pipe(bus, bus.protocol, pipe)
    for p in sorted(wanted):
        out[p] = own_driver if descriptor_for(p) is own else _on_pipe(bus, p, pipe)
    return out


def _on_pipe(bus: BusParams, protocol: str, pipe: BytePipe) -> MeterDriver:
    make = descriptor_for(protocol).create_driver_on
    assert make is not None
    return make(replace(bus, protocol=protocol), pipe)


def _line_pipe(bus: BusParams) -> BytePipe:
    """One serial pipe for a line several protocols share: their frames carry their length,
    so the silence kept between frames is the bus's ``inter_frame_s`` (0 when not given)."""
    from drivers.transport.serial import serial_pipe

    if not bus.port:
        raise ConfigError(f"bus {bus.id}: a serial bus needs 'port'")
    gap = bus.inter_frame_s if bus.inter_frame_s is not None else 0.0
    return serial_pipe(bus.port, bus.baudrate, bus.parity, bus.stopbits, bus.bytesize, silence_s=gap)


def compile_plan(protocol: str, points: Sequence[PointDef], options: PlanOptions) -> ReadPlan:
    """The read plan of ``points`` for a meter speaking ``protocol`` (pure; at load)."""
    return descriptor_for(protocol).compile_plan(points, options, protocol)


def wire_time(protocol: str, bus: BusParams, plan: ReadPlan) -> float | None:
    """The least seconds one execution of ``plan`` (compiled for ``protocol``) occupies the
    serial line ``bus``: its requests and replies at the line's baud rate and framing (data
    bits, parity, stop bits), the silences and turnaround the protocol owes. None on a TCP
    bus (no wire of the gateway's to fill) or when the protocol's package cannot say."""
    if bus.type != "serial":
        return None
    fn = descriptor_for(protocol).wire_time
    return None if fn is None else fn(replace(bus, protocol=protocol), plan)


def capabilities(protocol: str) -> Capabilities:
    """What a meter speaking ``protocol`` can be asked beyond its points."""
    return variant(protocol).capabilities
