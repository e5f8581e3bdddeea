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
from typing import TYPE_CHECKING, Final, Literal, cast

import yaml

from drivers.base import NO_PLAN_OPTIONS, PlanOptions, PointDef
from drivers.dlt698.catalogue import CANONICAL, OadPoint
from gateway.yamlpos import Invalid, Issues, MapView, as_choice, as_int, describe

if TYPE_CHECKING:
    from drivers.registry import ProfileRules

TOP_KEYS: Final = ("name", "protocol", "description", "defaults", "points")
_DEFAULT_KEYS: Final = ("side",)
_POINT_KEYS: Final = ("oad", "scaler", "unit", "side", "field")
_OAD_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
_SIDE = as_choice(("secondary", "primary"))
_TYPES: Final = {(p.oad, p.field): p.types for p in CANONICAL}


def parse_points(top: MapView, node: yaml.Node, issues: Issues,
                 rules: ProfileRules) -> tuple[dict[str, PointDef], PlanOptions]:
    """A DL/T 698.45 profile's points (problems recorded in ``issues``); no plan options."""
    return dict(_points(top, node, issues, rules)), NO_PLAN_OPTIONS


def _oad(node: yaml.Node) -> int:
    if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str"):
        raise Invalid(f'must be a quoted OAD of 8 hex digits such as "00100201", not {describe(node)} '
                      "(unquoted, YAML may read it as a number)")
    text = str(node.value).strip()
    if not _OAD_RE.match(text):
        raise Invalid(f'must be 8 hex digits (OI, attribute, index) such as "00100201", not "{text}"')
    return int(text, 16)


def _points(top: MapView, node: yaml.Node, issues: Issues,
            rules: ProfileRules) -> Iterable[tuple[str, OadPoint]]:
    dm = MapView(issues, top.node("defaults"), "profile defaults", _DEFAULT_KEYS)
    d_side = dm.get("side", _SIDE, "secondary")
    pm = MapView(issues, node, "profile points", None)
    out: list[tuple[str, OadPoint]] = []
    for name, value in pm.values.items():
        if not rules.point_name_ok(issues, pm.keys[name], name):
            continue
        m = MapView(issues, value, f"point {name}", _POINT_KEYS)
        if not m.ok:
            continue
        oad = m.req("oad", _oad, 'the OAD, e.g. "00100201"')
        scaler = m.opt("scaler", as_int(-20, 20))
        field = m.opt("field", as_int(0, 15))
        unit = rules.unit(m, name)
        side = cast(Literal["secondary", "primary"], m.get("side", _SIDE, d_side))
        if oad is None:
            continue
        out.append((name, OadPoint(name=name, oad=oad, scaler=scaler, unit=unit,
                                   types=_TYPES.get((oad, field), ()), side=side, field=field)))
    return out
