"""Meter profiles: YAML files that map canonical point names to registers or DL/T 645 DIs.

A profile describes one meter model once, so a configuration only says ``profile:
chint-dtsu666`` per meter. Profiles live in ``config/profiles/<name>.yaml``; a meter names
the profile by its file name. Loading is strict and line-precise, like the configuration:
every problem is reported with the profile's own file and line.

Modbus profile::

    name: chint-dtsu666
    protocol: modbus
    description: CHINT DTSU666 three-phase meter
    limits: {max_registers_per_request: 125, gap_fill: 10,
             pause_between_requests_ms: 0, one_request_per_point: false}
    defaults: {function: 3, type: f32, word_order: big, byte_order: big,
               side: primary, scale: 1}
    points:
      energy_import_kwh: {address: 0x101E, unit: kWh}
      voltage_v_l1: {address: 0x2006, scale: 0.1, unit: V}

DL/T 645 profile (``protocol: dlt645``)::

    points:
      energy_import_kwh: {di: "00010000", format: XXXXXX.XX, unit: kWh,
                          side: secondary, block: "0001FF00", index: 0}

Rules checked here: point names are canonical (:data:`CANONICAL_UNITS`) or vendor extras
(``x_*``) or meter events (``event_*``); a canonical point's unit, when given, is the
canonical unit (scale the register to it, e.g. Wh × 0.001 → kWh); Modbus types, function
codes 3/4, addresses 0–65535 with the value's registers inside the map, no two points of one
function code sharing a register; ``scale`` is an exact Decimal from the YAML text (never a
binary float); DIs are quoted hex strings (8 digits for 2007, 4 for 1997).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal, cast, get_args

import yaml

import drivers
from drivers.dlt645.points import DiPoint
from drivers.dlt645.values import FORMAT_NAMES, parse_format
from drivers.modbus.points import REGISTER_WIDTH, ModbusLimits, RegisterPoint, RegisterType
from gateway.errors import ConfigError, ConfigIssue
from gateway.settings import Profile
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
    as_text,
    compose,
    describe,
    suggest,
)


def _canonical() -> dict[str, str]:
    units: dict[str, str] = {}
    for direction in ("import", "export"):
        units[f"energy_{direction}_kwh"] = "kWh"
        for t in range(1, 5):
            units[f"energy_{direction}_kwh_t{t}"] = "kWh"
    units["energy_import_kvarh"] = "kvarh"
    units["energy_export_kvarh"] = "kvarh"
    units["demand_max_kw"] = "kW"
    units["demand_max_kw_at"] = ""
    units["power_kw"] = "kW"
    for ph in (1, 2, 3):
        units[f"power_kw_l{ph}"] = "kW"
    units["power_kvar"] = "kvar"
    units["power_factor"] = ""
    for ph in (1, 2, 3):
        units[f"voltage_v_l{ph}"] = "V"
    for ph in (1, 2, 3):
        units[f"current_a_l{ph}"] = "A"
    units["frequency_hz"] = "Hz"
    units["meter_clock"] = ""
    return units


CANONICAL_UNITS: Final[dict[str, str]] = _canonical()
"""Every canonical point name of the SPEC and its unit ("" for timestamps and PF)."""

CANONICAL_POINTS: Final[tuple[str, ...]] = tuple(CANONICAL_UNITS)
"""The canonical point names, in SPEC order."""

EXTRA_PREFIXES: Final = ("x_", "event_")
"""Prefixes of non-canonical names a profile may add: vendor extras and meter events."""

REGISTER_TYPES: Final[tuple[str, ...]] = get_args(RegisterType)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_EXTRA_RE = re.compile(r"^(x|event)_[a-z0-9_]+$")
_DI_RE = re.compile(r"^(0[xX])?([0-9A-Fa-f]{8}|[0-9A-Fa-f]{4})$")

_TOP_KEYS: Final = {
    "modbus": ("name", "protocol", "description", "limits", "defaults", "points"),
    "dlt645": ("name", "protocol", "description", "defaults", "points"),
}
_MODBUS_DEFAULT_KEYS: Final = ("function", "type", "word_order", "byte_order", "side", "scale")
_MODBUS_POINT_KEYS: Final = ("address", "function", "type", "word_order", "byte_order", "scale",
                             "unit", "side")
_DLT_DEFAULT_KEYS: Final = ("side",)
_DLT_POINT_KEYS: Final = ("di", "format", "unit", "side", "block", "index")
_LIMIT_KEYS: Final = ("max_registers_per_request", "gap_fill", "pause_between_requests_ms",
                      "one_request_per_point")

_ORDER = as_choice(("big", "little"))
_SIDE = as_choice(("secondary", "primary"))


def is_valid_point_name(name: str) -> bool:
    """True for a canonical SPEC point name or a vendor extra (``x_*``) / event (``event_*``)."""
    return name in CANONICAL_UNITS or bool(_EXTRA_RE.match(name))


def pattern_matches_anything(pattern: str) -> bool:
    """True when a schedule's glob pattern can select some point (canonical or extra)."""
    if pattern.startswith(EXTRA_PREFIXES) or pattern in ("*", "x_*", "event_*"):
        return True
    return any(fnmatch.fnmatchcase(name, pattern) for name in CANONICAL_POINTS)


def is_valid_profile_name(name: str) -> bool:
    """Profile names are file names: letters, digits, ``.``, ``_``, ``-``, no path parts."""
    return bool(_NAME_RE.match(name))


# ---------------------------------------------------------------------------------------
# locating

REPO_PROFILES_DIR: Final = Path(__file__).resolve().parent.parent / "config" / "profiles"
"""``config/profiles/`` of a checkout: links to the profiles in each protocol's package."""


def shipped_profile_dirs() -> list[Path]:
    """Where the profiles that ship with the gateway are: one directory per place they live.

    Each protocol package keeps its own (``drivers/<protocol>/profiles/*.yaml``, package
    data of the wheel). A checkout also has ``config/profiles/``, links to those same files,
    which is searched instead so that messages name the directory the SPEC documents; an
    installed wheel has no ``config/`` and searches the packages' directories.
    """
    if REPO_PROFILES_DIR.is_dir():
        return [REPO_PROFILES_DIR]
    root = Path(drivers.__file__).resolve().parent
    return sorted(d for d in root.glob("*/profiles") if d.is_dir())


def profile_file(name: str, search_dirs: Sequence[Path]) -> Path | None:
    """The first ``<dir>/<name>.yaml`` (or ``.yml``) in search order, or None."""
    if not is_valid_profile_name(name):
        return None
    for directory in search_dirs:
        for suffix in (".yaml", ".yml"):
            candidate = directory / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def available_profiles(search_dirs: Iterable[Path]) -> list[str]:
    """Names of every profile file in the search directories (sorted, no duplicates)."""
    names: set[str] = set()
    for directory in search_dirs:
        if directory.is_dir():
            names.update(p.stem for p in directory.iterdir()
                         if p.suffix in (".yaml", ".yml") and p.is_file())
    return sorted(names)


def find_profile(name: str, search_dirs: Sequence[Path]) -> Profile:
    """Load the profile called ``name`` from the first search directory that has it.

    Raises ConfigError when no directory has it (listing the profiles that exist) or when
    the profile file itself is invalid (issues in the profile's file, with lines).
    """
    path = profile_file(name, search_dirs)
    if path is None:
        dirs = ", ".join(str(d) for d in search_dirs) or "(no directories)"
        raise ConfigError([ConfigIssue(
            "<profiles>", None,
            f'profile "{name}" was not found in {dirs}; use one of '
            f"{', '.join(available_profiles(search_dirs)) or '(none)'}",
        )])
    return load_profile(path)


# ---------------------------------------------------------------------------------------
# loading


def load_profile(path: Path) -> Profile:
    """Read and validate one profile file; ConfigError lists every problem with its line."""
    issues = Issues(str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue(str(path), None,
                                       f"cannot read the profile ({exc}); check the path")]) from None
    profile = parse_profile(text, path.stem, issues, source=str(path))
    if issues or profile is None:
        raise ConfigError(issues.items)
    return profile


def parse_profile(text: str, stem: str, issues: Issues, *, source: str = "") -> Profile | None:
    """Parse profile text (file name ``stem``), recording problems in ``issues``.

    Returns the profile when it could be built (check ``issues`` as well: a profile with
    issues must not be used), or None when the text is not a profile at all.
    """
    root = compose(text, issues)
    if root is None:
        return None
    if not isinstance(root, yaml.MappingNode):
        issues.add(root, f"a profile must be a mapping with name, protocol and points, not "
                         f"{describe(root)}")
        return None
    protocol: Literal["modbus", "dlt645"] = "modbus"
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "protocol":
            try:
                protocol = cast(Literal["modbus", "dlt645"],
                                as_choice(("modbus", "dlt645"))(value_node))
            except Invalid as exc:
                issues.add(value_node, f"profile: protocol {exc}")
    top = MapView(issues, root, "profile", _TOP_KEYS[protocol])
    top.req("protocol", as_text, "modbus or dlt645")
    name = top.get("name", as_text, stem)
    if name != stem:
        issues.add(top.value_line("name"),
                   f'profile: name "{name}" differs from the file name "{stem}"; make them the '
                   "same, because meters name a profile by its file name")
    description = top.get("description", as_text, "")
    points_node = top.node("points")
    if points_node is None:
        top.req("points", as_text, "a mapping of point name to register")
        return None
    if protocol == "modbus":
        limits = _limits(top, issues)
        points: dict[str, RegisterPoint | DiPoint] = dict(_modbus_points(top, points_node, issues))
    else:
        limits = ModbusLimits()
        points = dict(_dlt645_points(top, points_node, issues))
    if not points and not issues:
        issues.add(points_node, "profile: points is empty; map at least one point")
    return Profile(name=name, protocol=protocol, points=points, limits=limits,
                   description=description, source=source)


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


def _point_name_ok(issues: Issues, key_node: yaml.Node, name: str) -> bool:
    if is_valid_point_name(name):
        return True
    issues.add(key_node,
               f'profile: "{name}" is not a canonical point name{suggest(name, CANONICAL_POINTS)}; '
               f"use one of {', '.join(CANONICAL_POINTS)}, or x_<name> for a vendor extra")
    return False


def _unit(m: MapView, name: str) -> str:
    canonical = CANONICAL_UNITS.get(name)
    unit = m.get("unit", as_text, canonical or "")
    if canonical is not None and canonical and unit != canonical:
        m.bad("unit", f'must be "{canonical}" for {name}, not "{unit}"; scale the register to '
                      f"{canonical} instead")
        return canonical
    return unit


def _modbus_points(top: MapView, node: yaml.Node,
                   issues: Issues) -> Iterable[tuple[str, RegisterPoint]]:
    dnode = top.node("defaults")
    dm = MapView(issues, dnode, "profile defaults", _MODBUS_DEFAULT_KEYS)
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
        if not _point_name_ok(issues, pm.keys[name], name):
            continue
        m = MapView(issues, value, f"point {name}", _MODBUS_POINT_KEYS)
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
            unit=_unit(m, name),
            side=cast(Literal["secondary", "primary"], m.get("side", _SIDE, d_side)),
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


def _di(node: yaml.Node) -> int:
    if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str"):
        raise Invalid(f'must be a quoted hex string such as "00010000", not {describe(node)} '
                      "(unquoted, YAML may read it as a number)")
    text = str(node.value).strip()
    if not _DI_RE.match(text):
        raise Invalid(f'must be 8 hex digits (DL/T 645-2007) or 4 (DL/T 645-1997) such as '
                      f'"00010000", not {describe(node)}')
    return int(text, 16)


def _fmt(node: yaml.Node) -> str:
    text = as_text(node).strip()
    try:
        parse_format(text)
    except ValueError:
        raise Invalid(f"must be a DL/T 645 value format, one of {', '.join(FORMAT_NAMES)} (± in "
                      f"front makes a number signed), not {describe(node)}") from None
    return text


def _dlt645_points(top: MapView, node: yaml.Node,
                   issues: Issues) -> Iterable[tuple[str, DiPoint]]:
    dm = MapView(issues, top.node("defaults"), "profile defaults", _DLT_DEFAULT_KEYS)
    d_side = dm.get("side", _SIDE, "secondary")
    pm = MapView(issues, node, "profile points", None)
    out: list[tuple[str, DiPoint]] = []
    for name, value in pm.values.items():
        if not _point_name_ok(issues, pm.keys[name], name):
            continue
        m = MapView(issues, value, f"point {name}", _DLT_POINT_KEYS)
        if not m.ok:
            continue
        di = m.req("di", _di, 'the data identifier, e.g. "00010000"')
        fmt = m.req("format", _fmt, "the value format, e.g. XXXXXX.XX")
        block = m.opt("block", _di)
        index = m.get("index", as_int(0, 63), 0)
        if "index" in m and "block" not in m:
            m.bad("index", "only applies to a block; add block or remove index")
        unit = _unit(m, name)
        side = cast(Literal["secondary", "primary"], m.get("side", _SIDE, d_side))
        if di is None or fmt is None:
            continue
        out.append((name, DiPoint(name=name, di=di, fmt=fmt, unit=unit, side=side, block=block,
                                  index=index)))
    return out
