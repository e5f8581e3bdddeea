"""The DL/T 645 part of a meter profile: data identifiers (DIs) and value formats.

A DL/T 645 profile (``protocol: dlt645``)::

    defaults: {side: secondary}
    points:
      energy_import_kwh: {di: "00010000", format: XXXXXX.XX, unit: kWh,
                          side: secondary, block: "0001FF00", index: 0}

``capacity: {digits: N, decimals: M}`` (optional) is where a cumulative register rolls over;
the default is its value format's digits (``XXXXXX.XX`` → 6 and 2; :mod:`drivers.capacity`).

Rules checked here: DIs are quoted hex strings (8 digits for 2007, 4 for 1997), formats are
DL/T 645 value formats, ``index`` only with a ``block``. Point names and units are checked
by the core's rules (:class:`drivers.registry.ProfileRules`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import yaml

from drivers.base import NO_PLAN_OPTIONS, PlanOptions, PointDef
from drivers.capacity import parse_capacity
from drivers.dlt645.points import DiPoint
from drivers.dlt645.values import FORMAT_NAMES, parse_format
from drivers.profile_points import default_side, point_maps, point_side, quoted_hex
from gateway.yamlpos import Invalid, Issues, MapView, as_int, as_text, describe

if TYPE_CHECKING:
    from drivers.registry import ProfileRules

TOP_KEYS: Final = ("name", "protocol", "description", "defaults", "points")
_DEFAULT_KEYS: Final = ("side",)
_POINT_KEYS: Final = ("di", "format", "unit", "side", "block", "index", "capacity")
_DI_RE = re.compile(r"^(0[xX])?([0-9A-Fa-f]{8}|[0-9A-Fa-f]{4})$")


def parse_points(top: MapView, node: yaml.Node, issues: Issues,
                 rules: ProfileRules) -> tuple[dict[str, PointDef], PlanOptions]:
    """A DL/T 645 profile's points (problems recorded in ``issues``); no plan options."""
    return dict(_points(top, node, issues, rules)), NO_PLAN_OPTIONS


def _di(node: yaml.Node) -> int:
    return quoted_hex(node, _DI_RE, 'a quoted hex string such as "00010000"',
                      '8 hex digits (DL/T 645-2007) or 4 (DL/T 645-1997) such as "00010000"')


def _fmt(node: yaml.Node) -> str:
    text = as_text(node).strip()
    try:
        parse_format(text)
    except ValueError:
        raise Invalid(f"must be a DL/T 645 value format, one of {', '.join(FORMAT_NAMES)} (± in "
                      f"front makes a number signed), not {describe(node)}") from None
    return text


def _points(top: MapView, node: yaml.Node, issues: Issues,
            rules: ProfileRules) -> Iterable[tuple[str, DiPoint]]:
    d_side = default_side(top, issues, _DEFAULT_KEYS, "secondary")
    out: list[tuple[str, DiPoint]] = []
    for name, m in point_maps(node, issues, rules, _POINT_KEYS):
        di = m.req("di", _di, 'the data identifier, e.g. "00010000"')
        fmt = m.req("format", _fmt, "the value format, e.g. XXXXXX.XX")
        block = m.opt("block", _di)
        index = m.get("index", as_int(0, 63), 0)
        if "index" in m and "block" not in m:
            m.bad("index", "only applies to a block; add block or remove index")
        unit = rules.unit(m, name)
        side = point_side(m, d_side)
        capacity = parse_capacity(m)
        if di is None or fmt is None:
            continue
        out.append((name, DiPoint(name=name, di=di, fmt=fmt, unit=unit, side=side, block=block,
                                  index=index, declared_capacity=capacity)))
    return out
