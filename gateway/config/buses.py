"""The ``buses`` section: serial lines and TCP endpoints, with protocol-dependent defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final, Literal, cast

from gateway.config.context import LoadContext, peek_text
from gateway.config.convert import ident
from gateway.settings import BusProtocol, BusSettings
from gateway.yamlpos import MapView, as_bool, as_choice, as_float, as_int, as_int_choice, as_text

STANDARD_BAUDRATES: Final = (300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200)
"""Baud rates a serial bus may use (the standard rates RS-485 meters support)."""

SERIAL_PROTOCOLS: Final = ("modbus-rtu", "dlt645", "dlt645-1997")
TCP_PROTOCOLS: Final = ("modbus-tcp", "modbus-rtu-over-tcp", "dlt645", "dlt645-1997")
_DEFAULT_BAUD: Final = {"modbus-rtu": 9600, "dlt645": 2400, "dlt645-1997": 1200}
_DEFAULT_TIMEOUT_MS: Final = {"modbus": 1000, "dlt645": 1500}
_BUS_COMMON: Final = ("id", "type", "protocol", "timeout_ms", "retries", "inter_frame_ms",
                      "allow_writes", "concurrency", "dead_backoff_s")
_BUS_KEYS: Final = {
    "serial": (*_BUS_COMMON, "port", "baudrate", "parity", "stopbits", "bytesize"),
    "tcp": (*_BUS_COMMON, "host", "port"),
}


def protocol_family(protocol: str) -> Literal["modbus", "dlt645"]:
    """``modbus`` for the Modbus protocols, ``dlt645`` for both DL/T 645 editions."""
    return "dlt645" if protocol.startswith("dlt645") else "modbus"


@dataclass
class BusRef:
    """A valid bus and the line of its id (to name the first one when an id is reused)."""

    settings: BusSettings
    line: int | None


def load_buses(ctx: LoadContext, top: MapView) -> dict[str, BusRef]:
    """The ``buses`` section: bus id → BusRef (invalid and duplicate buses reported)."""
    out: dict[str, BusRef] = {}
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
        out[bus.id] = BusRef(bus, m.value_line("id"))
    return out


def load_bus(ctx: LoadContext, m: MapView) -> BusSettings | None:
    """One bus item, with its protocol's defaults; None when it is not usable."""
    bus_id = m.req("id", ident, "a name such as rs485-1")
    btype = m.req("type", as_choice(("serial", "tcp")), "serial or tcp")
    allowed = TCP_PROTOCOLS if btype == "tcp" else SERIAL_PROTOCOLS
    every = tuple(dict.fromkeys((*SERIAL_PROTOCOLS, *TCP_PROTOCOLS)))
    protocol = m.req("protocol", as_choice(every), " | ".join(allowed))
    if btype is not None and protocol is not None and protocol not in allowed:
        other = "tcp" if btype == "serial" else "serial"
        m.bad("protocol", f"{protocol} needs a {other} bus; on a {btype} bus use one of "
              f"{', '.join(allowed)}")
        protocol = None
    family = protocol_family(protocol or "modbus")
    timeout_ms = m.get("timeout_ms", as_float(1, 60000), float(_DEFAULT_TIMEOUT_MS[family]))
    inter_frame = m.opt("inter_frame_ms", as_float(0, 10000))
    common = BusSettings(
        id="", type="serial", protocol="modbus-rtu",
        timeout_s=timeout_ms / 1000,
        retries=m.get("retries", as_int(0, 10), 1),
        inter_frame_s=inter_frame / 1000 if inter_frame is not None else None,
        allow_writes=m.get("allow_writes", as_bool, False),
        concurrency=m.get("concurrency", as_int(1, 1000), 1),
        dead_backoff_s=m.get("dead_backoff_s", as_float(0, 86400), 60.0),
    )
    if common.concurrency != 1 and protocol not in (None, "modbus-tcp"):
        m.bad("concurrency", f"must be 1 on a {protocol} bus, which carries one transaction at "
              "a time; only modbus-tcp buses may run several")
    if bus_id is None or btype is None or protocol is None:
        return None
    proto = cast(BusProtocol, protocol)
    if btype == "serial":
        port = m.req("port", as_text, "the serial device, e.g. /dev/ttyS1")
        baud = m.get("baudrate", as_int(), _DEFAULT_BAUD.get(protocol, 9600))
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
        return replace(common, id=bus_id, type="serial", protocol=proto, port=port,
                       baudrate=baud, parity=cast(Literal["N", "E", "O"], parity),
                       stopbits=stopbits, bytesize=bytesize)
    host = m.req("host", as_text, "the IP address or host name")
    tcp_port: int | None
    if "port" in m or protocol == "modbus-tcp":
        tcp_port = m.get("port", as_int(1, 65535), 502)
    else:
        tcp_port = m.req("port", as_int(1, 65535), "the TCP port of the serial server")
    if host is None or tcp_port is None:
        return None
    return replace(common, id=bus_id, type="tcp", protocol=proto, host=host, tcp_port=tcp_port)
