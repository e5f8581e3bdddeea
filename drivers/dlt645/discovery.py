"""Finding DL/T 645 meters on a line: the wildcard read-address, and probing addresses.

``amr-gateway scan --protocol dlt645`` uses these through :data:`DISCOVERY` (the shape every
protocol's scan shares, :mod:`drivers.discovery`). With exactly one meter on a line, the
wildcard read-address request (C = 13 to AA…AA) makes it tell its address. With several,
their replies collide, so the scan probes a list or range of candidate addresses one by
one (each probe is a short read the meter answers even to refuse it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Final

from drivers.base import MeterDriver
from drivers.discovery import Discovery, Found, Progress, ask_single, probe_each
from drivers.dlt645.codec import normalize_address
from drivers.dlt645.driver import Dlt645Driver
from gateway.errors import ConfigError, ReadTimeout


async def find_single_meter(driver: Dlt645Driver, timeout: float) -> str | None:
    """The address of the single meter on the line, or None when nobody answers.

    Raises :class:`~gateway.errors.FrameError` when several meters answer at once (the
    message says to probe addresses instead) and TransportError when the port fails.
    """
    try:
        return await driver.read_address(timeout)
    except ReadTimeout:
        return None


async def probe_addresses(
    driver: Dlt645Driver,
    addresses: Iterable[str],
    timeout: float,
    progress: Callable[[int, int], None] | None = None,
    found: Callable[[str], None] | None = None,
) -> list[str]:
    """Probe each address in turn; return those that answered (normalised, in order).

    ``progress(done, total)`` is called after each probe (and once with ``done = 0``)
    so a CLI can draw a progress bar; ``found(address)`` as soon as one answers.
    """
    return await probe_each(driver.probe, [normalize_address(a) for a in addresses], timeout, progress, found)


def address_range(first: str, last: str, *, limit: int = 10_000) -> Iterator[str]:
    """Every address from ``first`` to ``last`` inclusive (as 12-digit decimal numbers).

    Refuses ranges longer than ``limit``: at 2400 baud each silent address costs about
    half a second.
    """
    a, b = int(normalize_address(first)), int(normalize_address(last))
    if b < a:
        raise ConfigError(f"address range {first}-{last} is empty: the first address must come first")
    if b - a + 1 > limit:
        raise ConfigError(
            f"address range {first}-{last} has {b - a + 1} addresses (limit {limit}); at 2400 baud "
            "each silent address costs about half a second: narrow the range"
        )
    for n in range(a, b + 1):
        yield f"{n:012d}"


def candidates(wanted: str) -> list[str]:
    """The addresses of ``--range``: ``FIRST-LAST``, one address, or ``A,B,C``."""
    if "," in wanted:
        return [a.strip() for a in wanted.split(",")]
    first, _, last = wanted.partition("-")
    return list(address_range(first, last or first))


async def scan(driver: MeterDriver, wanted: str | None, timeout: float,
               progress: Progress | None = None, found: Found | None = None) -> list[str]:
    """Probe the addresses of ``wanted``; without it, ask the single meter of the line.

    ``driver`` must be a :class:`~drivers.dlt645.driver.Dlt645Driver` (the one the bus's
    protocol creates).
    """
    if not isinstance(driver, Dlt645Driver):
        raise TypeError(f"the DL/T 645 scan needs a Dlt645Driver, not {type(driver).__name__}")
    if wanted:
        return await probe_addresses(driver, candidates(wanted), timeout, progress, found)
    return await ask_single(driver.read_address, timeout, progress, found)


def check_range(wanted: str, protocol: str) -> None:
    """Raise ConfigError when ``wanted`` is not a list or range of addresses (before the bus opens)."""
    del protocol                      # every variant writes its addresses alike
    [normalize_address(a) for a in candidates(wanted)]


DISCOVERY: Final = Discovery(label="address", scan=scan, check=check_range)
"""The DL/T 645 scan, as ``amr-gateway scan`` calls it."""
