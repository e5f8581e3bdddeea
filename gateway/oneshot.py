"""``amr-gateway read`` and ``amr-gateway scan``: one meter now, or who answers on a bus.

Both build a bus and a driver exactly as the gateway would (same drivers, same plans, same
multiplier pipeline), so what ``read`` prints is what ``run`` would store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from drivers.discovery import Discovery
from gateway.drivers_registry import DLT645, compile_plan, create_driver
from gateway.errors import ConfigError
from gateway.model import json_number
from gateway.pipeline import ReadingBuilder
from gateway.profiles import find_profile, shipped_profile_dirs
from gateway.settings import BusSettings, MeterSettings, Profile, Ratio


def _protocol(args: argparse.Namespace) -> str:
    proto: str = args.protocol
    if proto == "modbus":
        return "modbus-tcp" if args.tcp else "modbus-rtu"
    return proto


def bus_from_args(args: argparse.Namespace) -> BusSettings:
    """An ad hoc bus from ``--tcp`` or ``--serial`` options."""
    protocol = _protocol(args)
    if bool(args.tcp) == bool(args.serial):
        raise ConfigError("give exactly one of --tcp HOST:PORT or --serial PORT")
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--tcp must be HOST:PORT, e.g. 127.0.0.1:502, not {args.tcp!r}")
        return BusSettings(id="cli", type="tcp", protocol=protocol, host=host, tcp_port=int(port),  # type: ignore[arg-type]
                           timeout_s=args.timeout, retries=0)
    baud = args.baud or (2400 if protocol == "dlt645" else 1200 if protocol == "dlt645-1997" else 9600)
    return BusSettings(id="cli", type="serial", protocol=protocol, port=args.serial, baudrate=baud,  # type: ignore[arg-type]
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
        address = args.address if bus.protocol in DLT645 else args.unit
        if not address:
            raise ConfigError("give --unit N for Modbus or --address 12-DIGITS for DL/T 645")
        meter = MeterSettings(id="cli", customer="", bus="cli", address=str(address), profile=profile.name,
                              ct_ratio=Ratio(), pt_ratio=Ratio(), protocol=bus.protocol)
    return await _read(bus, meter, profile)


async def _read(bus: BusSettings, meter: MeterSettings, profile: Profile) -> int:
    names = list(profile.points)
    plan = compile_plan(bus, meter, profile, names)
    driver = create_driver(bus)
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


def _discovery(protocol: str) -> Discovery:
    """The scan of the protocol package that speaks ``protocol`` (imported when needed)."""
    if protocol in DLT645:
        from drivers.dlt645.discovery import DISCOVERY as DLT645_DISCOVERY

        return DLT645_DISCOVERY
    from drivers.modbus.discovery import DISCOVERY as MODBUS_DISCOVERY

    return MODBUS_DISCOVERY


async def scan_bus(args: argparse.Namespace) -> int:
    """Find answering Modbus unit ids or DL/T 645 addresses; print a table."""
    bus = bus_from_args(args)
    driver = create_driver(bus)
    discovery = _discovery(bus.protocol)
    try:
        await driver.open()
        found = await discovery.scan(driver, args.id_range, args.timeout, _progress)
    finally:
        await driver.close()
    label = discovery.label
    if not found:
        print(f"no {label} answered", file=sys.stderr)
        return 1
    print(label)
    print("-" * max(len(label), 12))
    for f in found:
        print(f)
    return 0
