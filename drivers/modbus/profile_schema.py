"""The Modbus part of a meter profile: request limits, defaults and register points.

A Modbus profile (``protocol: modbus``)::

    limits: {max_registers_per_request: 125, gap_fill: 10,
             pause_between_requests_ms: 0, one_request_per_point: false}
    defaults: {function: 3, type: f32, word_order: big, byte_order: big,
               side: primary, scale: 1}
    points:
      energy_import_kwh: {address: 0x101E, unit: kWh}
      voltage_v_l1: {address: 0x2006, scale: 0.1, unit: V}

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
TOP_KEYS: Final = ("name", "protocol", "description", "limits", "defaults", "points")
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
    pm = MapView(issues, node, "profile points", None)
    spans: list[tuple[int, int, int, str, int]] = []  # function, start, end, name, line
    out: list[tuple[str, RegisterPoint]] = []
    for name, value in pm.values.items():
        if not rules.point_name_ok(issues, pm.keys[name], name):
            continue
        m = MapView(issues, value, f"point {name}", _POINT_KEYS)
        if not m.ok:
            continue
        address = m.req("address", _address, "the register address, e.g. 0x101E")
        function = m.get("function", as_int_choice((3, 4)), d_function)
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
