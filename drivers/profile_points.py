"""What every protocol's profile schema does the same way with a profile's ``points``.

Each protocol's ``profile_schema.py`` reads its own point keys (a DI, an OAD, a register
address), but walking the points is the same for all: every point name is checked by the
core's rules (:class:`drivers.registry.ProfileRules`) and every point must be a mapping of
the protocol's keys, or it is reported and skipped; ``side`` (secondary or primary
readings) is one of two words and the point's default comes from ``defaults``. The DL/T
protocols also share the rule that an identifier is a *quoted* hex string, because YAML
reads an unquoted ``00010000`` as a number and loses its leading zeros.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, Literal, cast

import yaml

from gateway.yamlpos import Converter, Invalid, Issues, MapView, as_choice, describe

if TYPE_CHECKING:
    from drivers.registry import ProfileRules

Side = Literal["secondary", "primary"]

#: The parser of a ``side`` value.
SIDE: Final[Converter[str]] = as_choice(("secondary", "primary"))


def default_side(top: MapView, issues: Issues, keys: tuple[str, ...], default: Side) -> Side:
    """The profile's ``defaults: {side: ...}`` (``default`` when absent); ``keys`` are the
    keys the protocol allows in ``defaults``."""
    dm = MapView(issues, top.node("defaults"), "profile defaults", keys)
    fallback: str = default
    return cast(Side, dm.get("side", SIDE, fallback))


def point_side(m: MapView, default: Side) -> Side:
    """A point's ``side``, or the profile's default."""
    fallback: str = default
    return cast(Side, m.get("side", SIDE, fallback))


def point_maps(node: yaml.Node, issues: Issues, rules: ProfileRules,
               keys: tuple[str, ...]) -> Iterator[tuple[str, MapView]]:
    """Each point of ``points`` whose name the core accepts and which is a mapping of
    ``keys``, as (name, its map); the others are recorded in ``issues`` and skipped."""
    pm = MapView(issues, node, "profile points", None)
    for name, value in pm.values.items():
        if not rules.point_name_ok(issues, pm.keys[name], name):
            continue
        m = MapView(issues, value, f"point {name}", keys)
        if not m.ok:
            continue
        yield name, m


def quoted_hex(node: yaml.Node, pattern: re.Pattern[str], quoted: str, shape: str) -> int:
    """A quoted hex string matching ``pattern``, as its number.

    ``quoted`` finishes "must be …" when the value is not a quoted string (say what it
    should look like) and ``shape`` when it is one of the wrong shape; the offending value
    follows both (the wrong-shape text as it is written, never with the generic advice to
    remove the quotes, which would make it a number).
    """
    if not (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:str"):
        raise Invalid(f"must be {quoted}, not {describe(node)} "
                      "(unquoted, YAML may read it as a number)")
    text = str(node.value).strip()
    if not pattern.match(text):
        raise Invalid(f'must be {shape}, not "{text}"')
    return int(text, 16)
