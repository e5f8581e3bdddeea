"""The one shape of a protocol's scan, so ``amr-gateway scan`` calls every protocol alike.

Each protocol package's ``discovery`` module offers a :class:`Discovery`: what its meters'
addresses are called (``unit id``, ``address``) and a :data:`ScanFunction` that, given an
opened driver of that protocol, the user's ``--range`` text (or None) and the per-request
timeout, returns the addresses that answered, in order. Progress is reported as
``progress(done, total)`` as candidates are tried, so the CLI can draw a bar.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from drivers.base import MeterDriver

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as candidates are tried."""

ScanFunction = Callable[[MeterDriver, str | None, float, Progress | None], Awaitable[list[str]]]
"""``scan(driver, wanted, timeout, progress)``: the addresses that answered, in order.

``wanted`` is the user's ``--range`` text in the protocol's own notation (None: the
protocol's default search). A malformed ``wanted`` is a ConfigError saying how to write it.
"""


@dataclass(frozen=True, slots=True)
class Discovery:
    """A protocol's scan: the name of its meter addresses and how to find the meters."""

    label: str
    scan: ScanFunction
