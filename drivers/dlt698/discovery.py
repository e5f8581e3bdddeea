"""Finding DL/T 698.45 meters on a line: the wildcard read of 4001, and probing addresses.

``amr-gateway scan --protocol dlt698`` uses these through :data:`DISCOVERY`. With exactly
one meter on a line, a GET of the communication address ``40010200`` to the wildcard
address (AF 45, SA AA×6, docs/protocols/dlt698-45.md §6) makes it answer from its own address. With several, their
replies collide, so the scan probes a list or range of candidate addresses one by one.
:func:`describe` then reads each found meter's clock (4000) and forward active energy
(0010, total) in one request, for the clock offset and a first energy reading.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, tzinfo
from decimal import Decimal
from typing import Final

from drivers.base import MeterDriver
from drivers.discovery import Discovery, Found, MeterFacts, Progress, ask_single, probe_each
from drivers.dlt698.catalogue import BY_NAME
from drivers.dlt698.driver import Dlt698Driver
from drivers.dlt698.frame import normalize_address
from drivers.dlt698.plan import compile_plan
from gateway.errors import AmrError, ConfigError

#: One request for both facts: the meter clock and the total forward active energy.
FACTS_PLAN: Final = compile_plan([BY_NAME["meter_clock"], BY_NAME["energy_import_kwh"]])


def address_range(first: str, last: str, *, limit: int = 10_000) -> Iterator[str]:
    """Every address from ``first`` to ``last`` inclusive (12-digit decimal numbers)."""
    a, b = int(normalize_address(first)), int(normalize_address(last))
    if b < a:
        raise ConfigError(f"address range {first}-{last} is empty: the first address must come first")
    if b - a + 1 > limit:
        raise ConfigError(f"address range {first}-{last} has {b - a + 1} addresses (limit {limit}): "
                          "narrow the range")
    for n in range(a, b + 1):
        yield f"{n:012d}"


def candidates(wanted: str) -> list[str]:
    """The addresses of ``--range``: ``FIRST-LAST``, one address, or ``A,B,C``."""
    if "," in wanted:
        return [normalize_address(a.strip()) for a in wanted.split(",")]
    first, _, last = wanted.partition("-")
    return list(address_range(first, last or first))


async def scan(driver: MeterDriver, wanted: str | None, timeout: float,
               progress: Progress | None = None, found: Found | None = None) -> list[str]:
    """Probe the addresses of ``wanted``; without it, ask the single meter of the line.

    ``found(address)`` hears of each answering meter at once (a stopped scan keeps them).
    """
    if not isinstance(driver, Dlt698Driver):
        raise TypeError(f"the DL/T 698.45 scan needs a Dlt698Driver, not {type(driver).__name__}")
    if wanted:
        return await probe_each(driver.probe, candidates(wanted), timeout, progress, found)
    return await ask_single(driver.read_address, timeout, progress, found)


async def describe(driver: MeterDriver, address: str, timeout: float, tz: tzinfo) -> MeterFacts:
    """The clock offset and the forward active energy of the meter at ``address``.

    The meter's clock (local, no zone) is read in ``tz`` and compared with this machine's
    clock at the reply's arrival; meters show whole seconds, so the offset is rounded to them.
    """
    if not isinstance(driver, Dlt698Driver):
        raise TypeError(f"the DL/T 698.45 scan needs a Dlt698Driver, not {type(driver).__name__}")
    try:
        out = await driver.read(address, FACTS_PLAN, timeout)
    except AmrError as exc:
        return MeterFacts(problem=str(exc))
    now = time.time()
    clock, energy = out["meter_clock"], out["energy_import_kwh"]
    offset: float | None = None
    if clock.quality == "good" and isinstance(clock.raw, str):
        offset = float(round(datetime.fromisoformat(clock.raw).replace(tzinfo=tz).timestamp() - now))
    kwh = energy.raw if energy.quality == "good" and isinstance(energy.raw, Decimal) else None
    problems = [f"{name}: {r.reason}" for name, r in out.items() if r.quality != "good"]
    return MeterFacts(offset, kwh, "; ".join(problems))


def check_range(wanted: str, protocol: str) -> None:
    """Raise ConfigError when ``wanted`` is not a list or range of addresses (before the bus opens)."""
    del protocol                      # every variant writes its addresses alike
    candidates(wanted)


DISCOVERY: Final = Discovery(label="address", scan=scan, describe=describe, check=check_range)
"""The DL/T 698.45 scan, as ``amr-gateway scan`` calls it."""
