"""A cumulative register's capacity: how many digits it shows before it rolls over.

An energy register of a meter counts up to its capacity and then starts again at zero
(999999.99 → 0.00 for six integer digits and two decimals). Billing needs the capacity to
tell a rollover (counted exactly: end + 10^digits − start) from a register that really went
down. A profile point may say it (``capacity: {digits: 6, decimals: 2}``: ``digits`` are
the integer digits the meter displays, ``decimals`` the digits after the point); each
protocol documents its default:

* DL/T 645: the point's value format (``XXXXXX.XX`` → 6 digits, 2 decimals);
* Modbus: none (a float or 32-bit register's wrap is the meter firmware's choice; set it in
  the profile when the meter rolls over), so a decrease is never taken for a rollover.

:func:`capacity_of` is how the core reads it from any protocol's point definition (an
optional ``capacity`` attribute), so protocols without the notion need nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Final

import yaml

from gateway.yamlpos import MapView, as_int, describe

_KEYS: Final = ("digits", "decimals")


@dataclass(frozen=True, slots=True)
class RegisterCapacity:
    """Integer digits and decimals a cumulative register shows; it wraps at 10^digits."""

    digits: int
    decimals: int

    @property
    def modulus(self) -> Decimal:
        """The raw value at which the register starts again at zero (10^digits)."""
        return Decimal(10) ** self.digits

    def doc(self) -> dict[str, int]:
        """JSON-ready form, as written in a profile."""
        return {"digits": self.digits, "decimals": self.decimals}


def capacity_of(point: object) -> RegisterCapacity | None:
    """The capacity a point definition carries (its optional ``capacity``), or None."""
    cap = getattr(point, "capacity", None)
    return cap if isinstance(cap, RegisterCapacity) else None


def parse_capacity(m: MapView, key: str = "capacity") -> RegisterCapacity | None:
    """A point's ``capacity: {digits: N, decimals: M}`` (None when absent or invalid; issues recorded)."""
    node = m.node(key)
    if node is None:
        return None
    if not isinstance(node, yaml.MappingNode):
        m.bad(key, f"must be a mapping such as {{digits: 6, decimals: 2}}, not {describe(node)}")
        return None
    cm = MapView(m.issues, node, f"{m.where} {key}", _KEYS)
    digits = cm.req("digits", as_int(1, 12), "the integer digits the meter shows, e.g. 6")
    decimals = cm.get("decimals", as_int(0, 6), 0)
    return None if digits is None else RegisterCapacity(digits, decimals)


def format_capacity(fmt: str) -> RegisterCapacity | None:
    """The capacity of a DL/T 645-style value format (``XXXXXX.XX`` → 6, 2); None when signed or not X-digits."""
    text = fmt.strip()
    if not text or text.startswith(("±", "-", "+")):
        return None
    whole, _, frac = text.partition(".")
    if set(whole) != {"X"} or (frac and set(frac) != {"X"}):
        return None
    return RegisterCapacity(len(whole), len(frac))


__all__ = ["RegisterCapacity", "capacity_of", "format_capacity", "parse_capacity"]

