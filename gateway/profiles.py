"""Meter profiles: YAML files that map canonical point names to a protocol's points.

A profile describes one meter model once, so a configuration only says ``profile:
chint-dtsu666`` per meter. Profiles live in ``config/profiles/<name>.yaml``; a meter names
the profile by its file name. Loading is strict and line-precise, like the configuration:
every problem is reported with the profile's own file and line.

Every profile has the common keys; ``protocol`` names the protocol family (a package in
``drivers/``, see :mod:`drivers.registry`), whose profile schema reads the rest::

    name: chint-dtsu666
    protocol: modbus
    description: CHINT DTSU666 three-phase meter
    points:
      energy_import_kwh: {address: 0x101E, unit: kWh}

The point keys of each protocol are described by its ``profile_schema`` module
(``drivers/<family>/profile_schema.py``).

Rules checked here, for every protocol: the protocol is installed; point names are canonical
(:data:`CANONICAL_UNITS`) or vendor extras (``x_*``) or meter events (``event_*``); a
canonical point's unit, when given, is the canonical unit (scale the register to it, e.g.
Wh × 0.001 → kWh). The protocol's schema checks its own keys (:class:`ProfileRules`).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final

import yaml

import drivers
from drivers import registry
from drivers.base import ReadPlan
from gateway.errors import ConfigError, ConfigIssue
from gateway.settings import BusSettings, MeterSettings, Profile
from gateway.yamlpos import (
    Invalid,
    Issues,
    MapView,
    as_choice,
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
    for q in range(1, 5):  # reactive energy per quadrant (SPEC: 5.8.0-8.8.0, for 力调)
        units[f"energy_q{q}_kvarh"] = "kvarh"
    return units


CANONICAL_UNITS: Final[dict[str, str]] = _canonical()
"""Every canonical point name of the gateway and its unit ("" for timestamps and PF)."""

CANONICAL_POINTS: Final[tuple[str, ...]] = tuple(CANONICAL_UNITS)
"""The canonical point names, in their documented order."""

EXTRA_PREFIXES: Final = ("x_", "event_")
"""Prefixes of non-canonical names a profile may add: vendor extras and meter events."""

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_EXTRA_RE = re.compile(r"^(x|event)_[a-z0-9_]+$")
_COMMON_TOP_KEYS: Final = ("name", "protocol", "description", "defaults", "points")


def is_valid_point_name(name: str) -> bool:
    """True for a canonical point name or a vendor extra (``x_*``) / event (``event_*``)."""
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
    which is searched instead so that messages name the directory the README documents; an
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
    families = registry.families()
    family: str | None = None
    for key_node, value_node in root.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == "protocol":
            try:
                family = as_choice(families)(value_node)
            except Invalid as exc:
                issues.add(value_node, f"profile: protocol {exc}")
    schema = registry.family(family).profile if family is not None else None
    # Without a known protocol only the keys every profile has are checked (and accepted:
    # any protocol's key could be meant); the points are not read.
    accepted = schema.top_keys if schema is not None else tuple(dict.fromkeys(
        (*_COMMON_TOP_KEYS, *(k for f in families for k in registry.family(f).profile.top_keys))))
    top = MapView(issues, root, "profile", accepted)
    top.req("protocol", as_text, " or ".join(families))
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
    if family is None or schema is None:
        return None
    points, limits = schema.parse_points(top, points_node, issues, _RULES)
    if not points and not issues:
        issues.add(points_node, "profile: points is empty; map at least one point")
    return Profile(name=name, protocol=family, points=points,
                   limits=limits, description=description, source=source)


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


class _CanonicalRules:
    """The core's point-name and unit rules, as :class:`drivers.registry.ProfileRules`."""

    def point_name_ok(self, issues: Issues, key_node: yaml.Node, name: str) -> bool:
        """True for a canonical name or a vendor extra/event; else an issue and False."""
        return _point_name_ok(issues, key_node, name)

    def unit(self, m: MapView, name: str) -> str:
        """The canonical unit of ``name`` (another one given is an issue) or the given one."""
        return _unit(m, name)


_RULES: Final = _CanonicalRules()


# ---------------------------------------------------------------------------------------
# plans


def compile_meter_plan(bus: BusSettings, meter: MeterSettings, profile: Profile,
                       names: Sequence[str]) -> ReadPlan:
    """The read plan of ``names`` (points of ``profile``) for ``meter`` on ``bus``.

    Compiled once at load by the protocol the meter speaks (its own ``protocol`` or its
    bus's), through the registry; ConfigError for what no request can read.
    """
    protocol = registry.meter_protocol(bus, meter.protocol)
    return registry.compile_plan(protocol, [profile.points[n] for n in names], profile.limits)
