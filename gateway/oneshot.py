"""``amr-gateway read`` and ``amr-gateway scan``: one meter now, or who answers on a bus.

Both build a bus and a driver exactly as the gateway would (same drivers, same plans, same
multiplier pipeline), so what ``read`` prints is what ``run`` would store.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any, Literal, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from drivers import registry
from drivers.discovery import MeterFacts
from gateway.errors import ConfigError
from gateway.model import json_number
from gateway.pipeline import ReadingBuilder
from gateway.profiles import compile_meter_plan, find_profile, shipped_profile_dirs
from gateway.settings import BusSettings, MeterSettings, Profile, Ratio


def _protocol(args: argparse.Namespace) -> str:
    """``--protocol``: a protocol name, or a family (the family's first protocol on the bus type).

    Without ``--protocol`` the first installed family is meant (the registry's listing order).
    """
    name: str = args.protocol or registry.families()[0]
    if name in registry.protocol_names():
        return name
    bus_type: Literal["serial", "tcp"] = "tcp" if args.tcp else "serial"
    for v in registry.family(name).variants:
        if bus_type in v.transports:
            return v.name
    raise ConfigError(f"{name} has no protocol for a {bus_type} bus; give --protocol")


def bus_from_args(args: argparse.Namespace) -> BusSettings:
    """An ad hoc bus from ``--tcp`` or ``--serial`` options."""
    protocol = _protocol(args)
    if bool(args.tcp) == bool(args.serial):
        raise ConfigError("give exactly one of --tcp HOST:PORT or --serial PORT")
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--tcp must be HOST:PORT, e.g. 127.0.0.1:502, not {args.tcp!r}")
        return BusSettings(id="cli", type="tcp", protocol=protocol, host=host, tcp_port=int(port),
                           timeout_s=args.timeout, retries=0)
    baud = args.baud or registry.variant(protocol).default_baudrate
    return BusSettings(id="cli", type="serial", protocol=protocol, port=args.serial, baudrate=baud,
                       parity=args.parity or "E", stopbits=args.stopbits, timeout_s=args.timeout,
                       retries=0)


def print_table(rows: list[tuple[str, str, str, str, str]], out: TextIO = sys.stdout) -> None:
    """A plain aligned table: point, raw, value, unit, quality."""
    header = ("point", "raw", "value", "unit", "quality")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    for r in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


async def read_once(args: argparse.Namespace) -> int:
    """Read every point of a meter's profile once and print the decoded table."""
    if args.config:
        from gateway.config import load_settings

        settings = load_settings(args.config)
        if not args.meter or args.meter not in settings.meters:
            raise ConfigError(f"--meter must name a meter of {args.config}: {', '.join(settings.meters)}")
        meter = settings.meters[args.meter]
        bus = settings.buses[meter.bus]
        profile = settings.profiles[meter.profile]
    else:
        bus = bus_from_args(args)
        if not args.profile:
            raise ConfigError("give --profile NAME (e.g. simulator, dlt645-2007, chint-dtsu666)")
        profile = find_profile(args.profile, [Path.cwd() / "profiles", *shipped_profile_dirs()])
        family = registry.descriptor_for(bus.protocol).family
        if profile.protocol != family:
            # said before anything is sent: a DL/T 645 profile read over Modbus cannot work
            raise ConfigError(
                f"--profile {profile.name} is a {profile.protocol} profile, but this read speaks "
                f"{bus.protocol}, which reads {family} profiles; give a {family} profile, or "
                f"--protocol {profile.protocol} to read the meter with that protocol")
        address = vars(args).get(registry.descriptor_for(bus.protocol).address_option)
        if not address:
            raise ConfigError("give " + " or ".join(
                f"--{d.address_option} {d.address_metavar} for {d.title}" for d in registry.descriptors()))
        descriptor = registry.descriptor_for(bus.protocol)
        try:  # the range validate accepts, so --unit 0 on a serial line fails the same way
            # plain=False: a command-line argument is text as typed, not a YAML scalar that
            # lost its leading zeros (000000000001 is a valid DL/T 645 address here)
            address = descriptor.parse_address(str(address), bus.protocol, False)
        except registry.AddressError as exc:
            raise ConfigError(f"--{descriptor.address_option} {exc}") from None
        meter = MeterSettings(id="cli", customer="", bus="cli", address=str(address), profile=profile.name,
                              ct_ratio=Ratio(), pt_ratio=Ratio(), protocol=bus.protocol)
    return await _read(bus, meter, profile)


async def _read(bus: BusSettings, meter: MeterSettings, profile: Profile) -> int:
    names = list(profile.points)
    plan = compile_meter_plan(bus, meter, profile, names)
    protocol = registry.meter_protocol(bus, meter.protocol)
    driver = registry.create_bus_drivers(bus, {protocol})[protocol]   # a meter of a mixed bus: its own
    try:
        await driver.open()
        results = await driver.read(meter.address, plan, bus.timeout_s)
    finally:
        await driver.close()
    reading = ReadingBuilder(meter, profile).build("read", time.time(), time.time(), results)
    rows = []
    for name, p in reading.points.items():
        rows.append((name, _text(p.raw), _text(p.value), p.unit, p.quality + (f" ({p.reason})" if p.reason else "")))
    print_table(rows)
    bad = sum(1 for p in reading.points.values() if p.quality != "good")
    if bad == len(reading.points):
        print(f"error: no point of meter {meter.address} could be read", file=sys.stderr)
        return 1
    return 0


def _text(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    return json_number(v)


def _progress(done: int, total: int) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()
    if done >= total:
        sys.stderr.write("\n")


async def scan_bus(args: argparse.Namespace) -> int:
    """Find the meters that answer on a bus (the protocol's own search); print a table.

    Where the protocol can take a first look at a found meter (``Discovery.describe``), the
    table also shows each meter's clock offset and a first energy reading. Stopped with
    Ctrl-C, the scan prints the meters found so far (and says it was interrupted) before the
    command exits 130, so a long scan of a busy line is not lost.
    """
    bus = bus_from_args(args)
    descriptor = registry.descriptor_for(bus.protocol)
    discovery = descriptor.discovery
    if args.id_range and discovery.check is not None:
        discovery.check(args.id_range, bus.protocol)     # a bad --range is said before the port opens
    driver = registry.create_driver(bus)
    facts: dict[str, MeterFacts] = {}
    so_far: list[str] = []
    tz = _scan_zone(vars(args).get("timezone"))
    try:
        await driver.open()
        found = await discovery.scan(driver, args.id_range, args.timeout, _progress, so_far.append)
        if discovery.describe is not None:
            for address in found:
                facts[address] = await discovery.describe(driver, address, args.timeout, tz)
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task, then raises KeyboardInterrupt (exit 130)
        sys.stderr.write("\n")
        print(f"interrupted: the scan was stopped; {len(so_far)} {discovery.label}"
              f"{'' if len(so_far) == 1 else 's'} found so far", file=sys.stderr)
        if so_far:
            _print_found(discovery.label, so_far, facts, discovery.describe is not None)
        sys.stdout.flush()
        raise
    finally:
        await driver.close()
    if not found:
        print(f"no {discovery.label} answered", file=sys.stderr)
        return 1
    _print_found(discovery.label, found, facts, discovery.describe is not None)
    return 0


def _print_found(label: str, found: list[str], facts: dict[str, MeterFacts], described: bool) -> None:
    """The scan's table: one address per line, with the facts read of each where described."""
    if not described:
        print(label)
        print("-" * max(len(label), 12))
        for f in found:
            print(f)
        return
    rows = [(label, "clock offset", "energy_import_kwh", "problem")]
    for f in found:
        m = facts.get(f, MeterFacts(problem="not looked at (scan interrupted)"))
        offset = "-" if m.clock_offset_s is None else f"{m.clock_offset_s:+.0f} s"
        energy = "-" if m.energy_import_kwh is None else f"{json_number(m.energy_import_kwh)} kWh"
        rows.append((f, offset, energy, m.problem))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    rows.insert(1, ("-" * widths[0], "-" * widths[1], "-" * widths[2], "-" * widths[3]))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _scan_zone(name: str | None) -> tzinfo:
    """``--timezone`` (the meters' local time zone), or this machine's."""
    if not name:
        zone = datetime.now().astimezone().tzinfo
        assert zone is not None
        return zone
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {name!r} is not a time zone name; use one such as Asia/Shanghai") from None
