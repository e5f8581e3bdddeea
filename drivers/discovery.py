"""The one shape of a protocol's scan, so ``amr-gateway scan`` calls every protocol alike.

Each protocol package's ``discovery`` module offers a :class:`Discovery`: what its meters'
addresses are called (``unit id``, ``address``) and a :data:`ScanFunction` that, given an
opened driver of that protocol, the user's ``--range`` text (or None) and the per-request
timeout, returns the addresses that answered, in order. Progress is reported as
``progress(done, total)`` as candidates are tried, so the CLI can draw a bar, and each
address that answers is handed to ``found(address)`` as soon as it does, so a scan the user
stops with Ctrl-C can still print the meters it had found.

A protocol may also offer ``describe``: a first look at one found meter, as
:class:`MeterFacts` (its clock offset and a first energy reading), which ``scan`` prints
beside each address. Every field is optional, so a protocol fills what it can read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from decimal import Decimal
from typing import Protocol

from drivers.base import MeterDriver
from gateway.errors import ReadTimeout

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called as candidates are tried."""

Found = Callable[[str], None]
"""``found(address)``: called as soon as a candidate answers (before the scan ends)."""


class ScanFunction(Protocol):
    """``scan(driver, wanted, timeout, progress, found)``: the addresses that answered, in order.

    ``wanted`` is the user's ``--range`` text in the protocol's own notation (None: the
    protocol's default search). A malformed ``wanted`` is a ConfigError saying how to write it.
    ``found`` (optional) hears of each answering address as the scan goes, in the same order.
    """

    def __call__(self, driver: MeterDriver, wanted: str | None, timeout: float,
                 progress: Progress | None = None, found: Found | None = None) -> Awaitable[list[str]]:
        """Run the scan; see the class."""


@dataclass(frozen=True, slots=True)
class MeterFacts:
    """What a scan read of a found meter besides its address; None where it was not read.

    ``clock_offset_s``: the meter's clock minus the gateway's, in seconds (the meter's local
    time read in the time zone the scan was given); ``energy_import_kwh``: the forward active
    energy register as the meter shows it (secondary side, no CT×PT); ``problem``: why a
    fact is missing (the meter's own words), empty when none is.
    """

    clock_offset_s: float | None = None
    energy_import_kwh: Decimal | None = None
    problem: str = ""


RangeCheck = Callable[[str, str], None]
"""``check(wanted, protocol)``: raises ConfigError when ``wanted`` (the user's ``--range``) is
not a range the protocol's scan of a ``protocol`` bus accepts; ``scan`` runs it before it
opens the bus, so a bad range is reported as such, not as whatever the port says."""

DescribeFunction = Callable[[MeterDriver, str, float, tzinfo], Awaitable[MeterFacts]]
"""``describe(driver, address, timeout, tz)``: one found meter's :class:`MeterFacts`.

Never raises for a meter that does not answer or refuses: that goes into ``problem``.
"""


@dataclass(frozen=True, slots=True)
class Discovery:
    """A protocol's scan: the name of its meter addresses, how to find the meters,
    (optionally) how to take a first look at one of them, and how to check a ``--range``
    before the bus is opened."""

    label: str
    scan: ScanFunction
    describe: DescribeFunction | None = None
    check: RangeCheck | None = None


async def probe_each(probe: Callable[[str, float], Awaitable[bool]], addresses: Sequence[str], timeout: float,
                     progress: Progress | None = None, found: Found | None = None) -> list[str]:
    """Probe ``addresses`` one by one with the driver's ``probe(address, timeout)``; those
    that answered, in order.

    The DL/T protocols' scan of a list or range: several meters on one line would collide
    on a wildcard request, so each candidate is asked alone. ``progress(0, total)`` comes
    first, then once per probe; ``found`` hears of each answering address at once.
    """
    total = len(addresses)
    if progress is not None:
        progress(0, total)
    answered: list[str] = []
    for i, address in enumerate(addresses, start=1):
        if await probe(address, timeout):
            answered.append(address)
            if found is not None:
                found(address)
        if progress is not None:
            progress(i, total)
    return answered


async def ask_single(read_address: Callable[[float], Awaitable[str]], timeout: float,
                     progress: Progress | None = None, found: Found | None = None) -> list[str]:
    """The address of the single meter on the line, as a list (empty when none answers).

    The DL/T protocols' scan without a range: one wildcard request that only a meter alone
    on its line can answer (several collide: the driver raises FrameError, and the user
    should give a range). Progress is one step.
    """
    if progress is not None:
        progress(0, 1)
    try:
        single = await read_address(timeout)
    except ReadTimeout:
        single = ""
    if single and found is not None:
        found(single)
    if progress is not None:
        progress(1, 1)
    return [single] if single else []
