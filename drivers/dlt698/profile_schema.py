"""The DL/T 698.45 part of a meter profile: OADs, scalers and units.

A DL/T 698.45 profile (``protocol: dlt698``)::

    defaults: {side: secondary}
    points:
      energy_import_kwh: {oad: "00100201", scaler: -2, unit: kWh}
      demand_max_kw:     {oad: "10100201", field: 0, scaler: -4, unit: kW}
      demand_max_kw_at:  {oad: "10100201", field: 1, side: primary}

``oad`` is the quoted 8-hex-digit OAD (OI, attribute, element index); ``scaler`` the power
of ten applied to the integer the meter sends (omit it for times and text); ``field`` picks
a member of a structure value. The Data types accepted for a known OAD are the catalogue's
(:mod:`drivers.dlt698.catalogue`); an OAD the catalogue does not know accepts any type.
Point names and units are checked by the core's rules (:class:`drivers.registry.ProfileRules`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import yaml

from drivers.base import NO_PLAN_OPTIONS, PlanOptions, PointDef
from drivers.dlt698.catalogue import CANONICAL, OadPoint
from drivers.profile_points import default_side, point_maps, point_side, quoted_hex
from gateway.yamlpos import Issues, MapView, as_int

if TYPE_CHECKING:
    from drivers.registry import ProfileRules

TOP_KEYS: Final = ("name", "protocol", "description", "defaults", "points")
_DEFAULT_KEYS: Final = ("side",)
_POINT_KEYS: Final = ("oad", "scaler", "unit", "side", "field")
_OAD_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_TYPES: Final = {(p.oad, p.field): p.types for p in CANONICAL}


def parse_points(top: MapView, node: yaml.Node, issues: Issues,
                 rules: ProfileRules) -> tuple[dict[str, PointDef], PlanOptions]:
    """A DL/T 698.45 profile's points (problems recorded in ``issues``); no plan options."""
    return dict(_points(top, node, issues, rules)), NO_PLAN_OPTIONS


def _oad(node: yaml.Node) -> int:
    return quoted_hex(node, _OAD_RE, 'a quoted OAD of 8 hex digits such as "00100201"',
                      '8 hex digits (OI, attribute, index) such as "00100201"')


def _points(top: MapView, node: yaml.Node, issues: Issues,
            rules: ProfileRules) -> Iterable[tuple[str, OadPoint]]:
    d_side = default_side(top, issues, _DEFAULT_KEYS, "secondary")
    out: list[tuple[str, OadPoint]] = []
    for name, m in point_maps(node, issues, rules, _POINT_KEYS):
        oad = m.req("oad", _oad, 'the OAD, e.g. "00100201"')
        scaler = m.opt("scaler", as_int(-20, 20))
        field = m.opt("field", as_int(0, 15))
        unit = rules.unit(m, name)
        side = point_side(m, d_side)
        if oad is None:
            continue
        out.append((name, OadPoint(name=name, oad=oad, scaler=scaler, unit=unit,
                                   types=_TYPES.get((oad, field), ()), side=side, field=field)))
    return out
