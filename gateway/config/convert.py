"""Value converters the configuration sections share (identifiers, durations, decimals).

Each converter takes a YAML node and returns a value, or raises
:class:`~gateway.yamlpos.Invalid` with the end of a sentence that the section's
:class:`~gateway.yamlpos.MapView` prefixes with where the value is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Final, TypeVar

import yaml

from gateway.yamlpos import Invalid, as_decimal, as_text, describe, is_unquoted_number, scalar_text

T = TypeVar("T")
Conv = Callable[[yaml.Node], T]
"""A converter: YAML node → value (raises Invalid)."""

DAY_S: Final = Decimal(86400)
"""Seconds in a day: aligned schedules divide it, billing tolerances stay within it."""

_IDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> Decimal:
    """Seconds in a duration such as ``15m``, ``1h30m``, ``500ms``; ValueError if malformed."""
    compact = text.strip().replace(" ", "")
    pos = 0
    total = Decimal(0)
    factors = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600),
               "d": Decimal(86400)}
    for match in _DURATION_RE.finditer(compact):
        if match.start() != pos:
            break
        total += Decimal(match.group(1)) * factors[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ValueError(f"not a duration: {text!r}")
    return total


def abs_path(base_dir: Path, p: Path) -> Path:
    """``p`` made absolute against ``base_dir`` (the configuration file's directory)."""
    return Path(os.path.abspath(base_dir / p))


def ident(node: yaml.Node) -> str:
    """Converter: an identifier that can appear in topics and URLs."""
    text = as_text(node)
    if not _IDENT_RE.match(text):
        raise Invalid(f'must use only letters, digits, ".", "_" and "-" (it appears in topics and '
                      f"URLs), not {describe(node)}")
    return text


def duration(min_s: Decimal = Decimal("0.001"), max_s: Decimal | None = None) -> Conv[Decimal]:
    """Converter factory: a duration with a unit, in seconds, between ``min_s`` and ``max_s``."""
    def convert(node: yaml.Node) -> Decimal:
        try:
            if is_unquoted_number(node):
                raise ValueError
            value = parse_duration(scalar_text(node))
        except ValueError:
            raise Invalid(f"must be a duration with a unit such as 30s, 15m, 1h or 1d, not "
                          f"{describe(node)}") from None
        if value < min_s:
            raise Invalid(f"must be at least {fmt_s(min_s)}, not {describe(node)}")
        if max_s is not None and value > max_s:
            raise Invalid(f"must be at most {fmt_s(max_s)}, not {describe(node)}")
        return value

    return convert


def fmt_s(seconds: Decimal) -> str:
    """A duration in seconds written back with the largest unit that divides it (``15m``, ``500ms``)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{int(seconds * 1000)}ms"


def positive_decimal(node: yaml.Node) -> Decimal:
    """Converter: a decimal number greater than 0."""
    value = as_decimal(node)
    if value <= 0:
        raise Invalid(f"must be greater than 0, not {describe(node)}")
    return value
