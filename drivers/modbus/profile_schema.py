"""The Modbus part of a meter profile: request limits, defaults and register points.

A Modbus profile (``protocol: modbus``)::

    limits: {max_registers_per_request: 125, gap_fill: 10,
             pause_between_requests_ms: 0, one_request_per_point: false}
    defaults: {function: 3, type: f32, word_order: big, byte_order: big,
               side: primary, scale: 1}
    points:
      energy_import_kwh: {address: 0x101E, unit: kWh}
      voltage_v_l1: {address: 0x2006, scale: 0.1, unit: V}

``address_base`` says how the map numbers its registers: ``0`` (the default: the address
sent on the wire, as most makers print it in hex), ``1`` (the map counts from 1: the gateway
subtracts 1) or ``modicon`` (the map writes 4xxxx for holding and 3xxxx for input registers:
40001 is holding register 0, 30001 input register 0). Without ``address_base``, a decimal
address that looks like Modicon notation (40001–49999 with function 3, 30001–39999 with
function 4) is refused with the fix, because taken literally it reads 40000 registers past
the value the author meant; ``address_base: 0`` says the number is meant literally.

Rules checked here: register types, function codes 3/4, addresses 0–65535 with the value's
registers inside the map, no two points of one function code sharing a register; ``scale``
is an exact Decimal from the YAML text (never a binary float). ``capacity: {digits: N,
decimals: M}`` (optional, no default: :mod:`drivers.capacity`) is where a cumulative register
rolls over. The point names and units are
checked by the core's rules (:class:`drivers.registry.ProfileRules`).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Final, Literal, cast, get_args

import yaml

from drivers.base import PlanOptions, PointDef
from drivers.capacity import parse_capacity
from drivers.modbus.points import REGISTER_WIDTH, ModbusLimits, RegisterPoint, RegisterType
from drivers.profile_points import point_maps
from gateway.yamlpos import (
    Invalid,
    Issues,
    MapView,
    as_bool,
    as_choice,
    as_decimal,
    as_float,
    as_int,
    as_int_choice,
    describe,
)

if TYPE_CHECKING:
    from drivers.registry import ProfileRules

REGISTER_TYPES: Final[tuple[str, ...]] = get_args(RegisterType)
TOP_KEYS: Final = ("name", "protocol", "description", "address_base", "limits", "defaults",
                   "points")
_DEFAULT_KEYS: Final = ("function", "type", "word_order", "byte_order", "side", "scale")
_POINT_KEYS: Final = ("address", "function", "type", "word_order", "byte_order", "scale",
                      "unit", "side", "capacity")
_LIMIT_KEYS: Final = ("max_registers_per_request", "gap_fill", "pause_between_requests_ms",
                      "one_request_per_point")

_ORDER = as_choice(("big", "little"))
_SIDE = as_choice(("secondary", "primary"))


def parse_points(top: MapView, node: yaml.Node, issues: Issues,
                 rules: ProfileRules) -> tuple[dict[str, PointDef], PlanOptions]:
    """A Modbus profile's points and request limits (problems recorded in ``issues``)."""
    limits = _limits(top, issues)
    return dict(_points(top, node, issues, rules)), limits


def _limits(top: MapView, issues: Issues) -> ModbusLimits:
    node = top.node("limits")
    if node is None:
        return ModbusLimits()
    m = MapView(issues, node, "profile limits", _LIMIT_KEYS)
    d = ModbusLimits()
    return ModbusLimits(
        max_registers_per_request=m.get("max_registers_per_request", as_int(1, 125),
                                        d.max_registers_per_request),
        gap_fill=m.get("gap_fill", as_int(0, 124), d.gap_fill),
        pause_between_requests_ms=m.get("pause_between_requests_ms", as_float(0, 60000),
                                        d.pause_between_requests_ms),
        one_request_per_point=m.get("one_request_per_point", as_bool, d.one_request_per_point),
    )


ADDRESS_BASES: Final = ("0", "1", "modicon")
"""The ways a register map may number its registers (see the module docstring)."""

_MODICON_BASE: Final = {3: 40001, 4: 30001}


def _address_base(node: yaml.Node) -> str:
    text = str(node.value).strip().lower() if isinstance(node, yaml.ScalarNode) else ""
    if text not in ADDRESS_BASES:
        raise Invalid(f"must be 0, 1 or modicon, not {describe(node)}")
    return text


def _is_hex(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and str(node.value).strip().lower().startswith("0x")


def wire_address(written: int, function: int, base: str | None, hex_written: bool) -> int:
    """The protocol address of a register written as ``written`` under ``address_base``.

    Raises Invalid with the fix when the number cannot be meant as written: a Modicon-looking
    decimal number without ``address_base``, or a number outside the declared base's range.
    """
    kind = "holding" if function == 3 else "input"
    modicon = _MODICON_BASE[function]
    if base == "modicon":
        if hex_written or not modicon <= written <= modicon + 9998:
            raise Invalid(f"must be a Modicon {kind} register number {modicon}-{modicon + 9998} "
                          f"(address_base: modicon, function {function}), not {written}")
        return written - modicon
    if base == "1":
        if written < 1:
            raise Invalid("must be 1 or more: the profile's address_base is 1")
        return written - 1
    if base is None and not hex_written and modicon <= written <= modicon + 9998:
        raise Invalid(f"{written} looks like Modicon notation ({str(modicon)[0]}xxxx = {kind} "
                      f"register xxxx-1): write {written - modicon} (or the map's hex address), "
                      "or set address_base: modicon at the top of the profile; if the meter "
                      f"really has a register at {written}, set address_base: 0")
    return written


def _address(node: yaml.Node) -> int:
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str":
        try:
            value = int(str(node.value).replace("_", ""), 0)
        except ValueError:
            raise Invalid(f"must be a register address such as 0x101E or 4126, not "
                          f"{describe(node)}") from None
    else:
        try:
            value = as_int()(node)
        except Invalid:
            raise Invalid(f"must be a register address such as 0x101E or 4126, not "
                          f"{describe(node)}") from None
    if not 0 <= value <= 0xFFFF:
        raise Invalid(f"must be between 0 and 65535 (0xFFFF), not {value}")
    return value


def _scale(node: yaml.Node) -> Decimal:
    value = as_decimal(node)
    if value == 0:
        raise Invalid("must not be 0 (it would zero every value)")
    return value


def _points(top: MapView, node: yaml.Node, issues: Issues,
            rules: ProfileRules) -> Iterable[tuple[str, RegisterPoint]]:
    dnode = top.node("defaults")
    dm = MapView(issues, dnode, "profile defaults", _DEFAULT_KEYS)
    d_function = dm.get("function", as_int_choice((3, 4)), 3)
    d_type = dm.get("type", as_choice(REGISTER_TYPES), "u16")
    d_word = dm.get("word_order", _ORDER, "big")
    d_byte = dm.get("byte_order", _ORDER, "big")
    d_side = dm.get("side", _SIDE, "primary")
    d_scale = dm.get("scale", _scale, Decimal(1))
    base = top.opt("address_base", _address_base)
    spans: list[tuple[int, int, int, str, int]] = []  # function, start, end, name, line
    out: list[tuple[str, RegisterPoint]] = []
    for name, m in point_maps(node, issues, rules, _POINT_KEYS):
        address = m.req("address", _address, "the register address, e.g. 0x101E")
        function = m.get("function", as_int_choice((3, 4)), d_function)
        if address is not None:
            anode = m.node("address")
            try:
                address = wire_address(address, function, base,
                                       anode is not None and _is_hex(anode))
            except Invalid as exc:
                m.bad("address", str(exc))
                continue
        rtype = m.get("type", as_choice(REGISTER_TYPES), d_type)
        point = RegisterPoint(
            name=name,
            function=function,
            address=address if address is not None else 0,
            type=cast(RegisterType, rtype),
            word_order=cast(Literal["big", "little"], m.get("word_order", _ORDER, d_word)),
            byte_order=cast(Literal["big", "little"], m.get("byte_order", _ORDER, d_byte)),
            scale=m.get("scale", _scale, d_scale),
            unit=rules.unit(m, name),
            side=cast(Literal["secondary", "primary"], m.get("side", _SIDE, d_side)),
            capacity=parse_capacity(m),
        )
        if address is None:
            continue
        end = address + REGISTER_WIDTH[rtype] - 1
        if end > 0xFFFF:
            m.bad("address", f"{address:#06x} leaves no room for the {REGISTER_WIDTH[rtype]} "
                             f"registers of a {rtype}; fix the address or the type")
            continue
        spans.append((function, address, end, name, m.value_line("address") or 0))
        out.append((name, point))
    spans.sort()
    reach: tuple[int, int, int, str] | None = None  # function, start, end, name of the widest
    for function, start, end, name, line in spans:
        if reach is not None and reach[0] == function and start <= reach[2]:
            _, s1, e1, n1 = reach
            issues.add(line, f"profile: point {name} (registers {start:#06x}-{end:#06x}) overlaps "
                             f"point {n1} ({s1:#06x}-{e1:#06x}); fix one of the addresses or types")
        if reach is None or reach[0] != function or end > reach[2]:
            reach = (function, start, end, name)
    return out
