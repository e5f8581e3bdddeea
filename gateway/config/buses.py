"""The ``buses`` section: serial lines and TCP endpoints, with protocol-dependent defaults.

Which protocols exist, which bus types they ride, and their defaults (baud rate, reply
timeout, TCP port, whether a TCP bus may run several transactions) come from the protocol
packages' descriptors (:mod:`drivers.registry`); this module names no protocol.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Final, Literal, cast

from drivers import registry
from gateway.config.context import LoadContext, peek_text
from gateway.config.convert import ident
from gateway.settings import BusSettings
from gateway.yamlpos import MapView, as_bool, as_choice, as_float, as_int, as_int_choice, as_text

SIMULATED_HOSTS: Final = ("127.0.0.1", "localhost", "::1")
"""Hosts a ``simulate: true`` TCP bus may name: the gateway serves it on loopback only."""

STANDARD_BAUDRATES: Final = (300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)
"""Baud rates a serial bus may use (the standard rates RS-485 meters support)."""

_BUS_COMMON: Final = ("id", "type", "protocol", "timeout_ms", "retries", "inter_frame_ms",
                      "allow_writes", "concurrency", "dead_backoff_s", "simulate")
_BUS_KEYS: Final = {
    "serial": (*_BUS_COMMON, "port", "baudrate", "parity", "stopbits", "bytesize"),
    "tcp": (*_BUS_COMMON, "host", "port"),
}


def protocols_for(bus_type: str | None) -> tuple[str, ...]:
    """The installed protocols a bus of ``bus_type`` may speak (every one, serial first, when None)."""
    serial, tcp = registry.protocol_names("serial"), registry.protocol_names("tcp")
    if bus_type == "serial":
        return serial
    if bus_type == "tcp":
        return tcp
    return tuple(dict.fromkeys((*serial, *tcp)))


@dataclass
class BusRef:
    """A valid bus, the line of its id (to name the first one when an id is reused), and
    whether the gateway serves it with its own simulators (``simulate: true``)."""

    settings: BusSettings
    line: int | None
    simulate: bool = False


def load_buses(ctx: LoadContext, top: MapView) -> dict[str, BusRef]:
    """The ``buses`` section: bus id → BusRef (invalid and duplicate buses reported).

    Two serial buses on one device are refused: each bus owns its port and polls it on its
    own, so two of them would interleave their frames on one line and corrupt both. Two names
    of one device (a ``/dev/serial/by-id`` link and the ``/dev/ttyUSB0`` it points at) are one.
    """
    out: dict[str, BusRef] = {}
    ports: dict[str, BusRef] = {}  # serial device -> the first bus on it
    if "buses" not in top:
        top.req("buses", as_text, "a list of serial or tcp buses")
    for i, node in enumerate(ctx.seq(top.node("buses"), "buses", "each item starts with - id:")):
        bus_id = peek_text(node, "id")
        where = f'bus "{bus_id}"' if bus_id else f"bus #{i + 1}"
        if bus_id:
            ctx.declared_buses.add(bus_id)
        type_text = peek_text(node, "type")
        accepted = _BUS_KEYS.get(type_text or "") or tuple(
            dict.fromkeys((*_BUS_KEYS["serial"], *_BUS_KEYS["tcp"])))
        m = MapView(ctx.issues, node, where, accepted)
        if not m.ok:
            continue
        bus = load_bus(ctx, m)
        if bus is None:
            continue
        if bus.id in out:
            ctx.issues.add(m.value_line("id"), f'bus id "{bus.id}" is already used on line '
                           f"{out[bus.id].line}; give each bus a unique id")
            continue
        simulate = m.get("simulate", as_bool, False)
        device = serial_device(bus.port, simulate) if bus.type == "serial" and bus.port is not None else None
        if device is not None and device in ports:
            first = ports[device]
            if first.settings.port == bus.port:
                same = "is already the port of bus"
            elif first.settings.port == device:
                same = f"is a link to {device}, the port of bus"
            else:
                same = f"names the same device ({device}) as {first.settings.port}, the port of bus"
            m.bad("port", f'{bus.port} {same} "{first.settings.id}" (line '
                  f'{first.line}); bus "{first.settings.id}" and bus "{bus.id}" cannot share one '
                  "serial line: give each bus its own port, or put all the meters of that line "
                  "on one bus")
            continue
        if simulate and bus.type == "tcp" and bus.host not in SIMULATED_HOSTS:
            m.bad("simulate", "needs a loopback host: a simulated bus is served by the gateway itself on "
                  f"this machine, so its host must be 127.0.0.1, localhost or ::1, not {bus.host}; "
                  "remove simulate to poll a real meter there")
            continue
        out[bus.id] = BusRef(bus, m.value_line("id"), simulate)
        if device is not None:
            ports[device] = out[bus.id]
    return out


def serial_device(port: str, simulate: bool) -> str:
    """The device a serial bus's ``port`` names: links followed (``/dev/serial/by-id/…`` and
    ``/dev/ttyUSB0`` are one adapter), nothing opened. A simulated bus's port is the link the
    simulator makes to its own pseudo-terminal, so it is taken as written: a link left by an
    earlier run may point at a terminal another simulated bus's old link points at too."""
    return port if simulate else os.path.realpath(port)


def load_bus(ctx: LoadContext, m: MapView) -> BusSettings | None:
    """One bus item, with its protocol's defaults; None when it is not usable."""
    bus_id = m.req("id", ident, "a name such as rs485-1")
    btype = m.req("type", as_choice(("serial", "tcp")), "serial or tcp")
    allowed = protocols_for(btype if btype == "tcp" else "serial")
    protocol = m.req("protocol", as_choice(protocols_for(None)), " | ".join(allowed))
    if btype is not None and protocol is not None and protocol not in allowed:
        other = "tcp" if btype == "serial" else "serial"
        m.bad("protocol", f"{protocol} needs a {other} bus; on a {btype} bus use one of "
              f"{', '.join(allowed)}")
        protocol = None
    variant = registry.variant(protocol) if protocol is not None else None
    timeout_ms = m.opt("timeout_ms", as_float(1, 60000))
    inter_frame = m.opt("inter_frame_ms", as_float(0, 10000))
    retries = m.get("retries", as_int(0, 10), 1)
    allow_writes = m.get("allow_writes", as_bool, False)
    concurrency = m.get("concurrency", as_int(1, 1000), 1)
    dead_backoff_s = m.get("dead_backoff_s", as_float(0, 86400), 60.0)
    if concurrency != 1 and variant is not None and not variant.concurrent:
        several = [v for d in registry.descriptors() for v in d.variants if v.concurrent]
        m.bad("concurrency", f"must be 1 on a {protocol} bus, which carries one transaction at "
              f"a time; only {' and '.join(v.name for v in several) or 'no'} buses may run several")
    if bus_id is None or btype is None or protocol is None or variant is None:
        return None
    if timeout_ms is None:
        timeout_ms = registry.descriptor_for(protocol).default_timeout_ms
    common = BusSettings(
        id=bus_id, type=cast(Literal["serial", "tcp"], btype), protocol=protocol,
        timeout_s=timeout_ms / 1000,
        retries=retries,
        inter_frame_s=inter_frame / 1000 if inter_frame is not None else None,
        allow_writes=allow_writes,
        concurrency=concurrency,
        dead_backoff_s=dead_backoff_s,
    )
    if btype == "serial":
        port = m.req("port", as_text, "the serial device, e.g. /dev/ttyS1")
        baud = m.get("baudrate", as_int(), variant.default_baudrate)
        if baud not in STANDARD_BAUDRATES:
            m.bad("baudrate", f"{baud} is not a standard rate; use one of "
                  f"{', '.join(map(str, STANDARD_BAUDRATES))}")
        parity = m.get("parity", as_choice(("N", "E", "O"), fold_case=True), "E")
        stopbits = m.get("stopbits", as_int_choice((1, 2)), 1)
        bytesize = m.get("bytesize", as_int_choice((7, 8)), 8)
        if bytesize != 8:
            m.bad("bytesize", f"{bytesize} cannot carry {protocol} frames, which need 8 data "
                  "bits; use 8")
        if port is None:
            return None
        return replace(common, port=port,
                       baudrate=baud, parity=cast(Literal["N", "E", "O"], parity),
                       stopbits=stopbits, bytesize=bytesize)
    host = m.req("host", as_text, "the IP address or host name")
    tcp_port: int | None
    if variant.default_tcp_port is not None:
        tcp_port = m.get("port", as_int(1, 65535), variant.default_tcp_port)
    else:
        tcp_port = m.req("port", as_int(1, 65535), "the TCP port of the serial server")
    if host is None or tcp_port is None:
        return None
    return replace(common, host=host, tcp_port=tcp_port)
