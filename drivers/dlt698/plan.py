"""A DL/T 698.45 read plan: the profile's points grouped into GET-Request-NormalList requests.

Several OADs per request is how a 698.45 bus approaches its wire limit: one request of
``k`` OADs costs one frame overhead (about 20 bytes each way plus the bus turnaround)
instead of ``k``. Points that share an OAD (``demand_max_kw`` and ``demand_max_kw_at`` are
one structure) are read once. The number of OADs per request is bounded so the reply stays
well inside one frame without link fragmentation: :data:`MAX_OADS` element reads of energy,
power or demand give a reply under 600 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from drivers.dlt698.catalogue import OadPoint
from gateway.errors import ConfigError

MAX_OADS: Final = 24


@dataclass(frozen=True, slots=True)
class Dlt698Plan:
    """The points of a profile and the OADs of each NormalList request, in order."""

    points: tuple[OadPoint, ...]
    batches: tuple[tuple[int, ...], ...]

    @property
    def request_count(self) -> int:
        """Requests one execution costs."""
        return len(self.batches)


def compile_plan(points: Sequence[OadPoint], max_oads: int = MAX_OADS) -> Dlt698Plan:
    """Group the distinct OADs of ``points`` into requests of at most ``max_oads``."""
    if max_oads < 1:
        raise ConfigError("a DL/T 698.45 request carries at least one OAD")
    if not points:
        raise ConfigError("a DL/T 698.45 profile needs at least one point")
    oads = list(dict.fromkeys(p.oad for p in points))
    batches = tuple(tuple(oads[i : i + max_oads]) for i in range(0, len(oads), max_oads))
    return Dlt698Plan(tuple(points), batches)
