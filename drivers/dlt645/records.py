"""Freeze and settlement records of a DL/T 645 meter: what billing reads as authority.

* :func:`read_settlement`: the registers frozen at the n-th previous settlement day
  (上n结算日, DI0 = n), with the settlement instant computed from the meter's clock and its
  settlement days (:func:`nth_previous_settlement`);
* :func:`read_daily_freeze`: the daily freeze taken at the start of a given day, found by
  date in the meter's freeze log (the log may have gaps, so an index is never assumed).

Both read through the driver's :data:`~drivers.dlt645.payload.ReadPayload` with the bus
lock held (:meth:`Dlt645Driver.read_settlement <drivers.dlt645.driver.Dlt645Driver.read_settlement>`,
:meth:`~drivers.dlt645.driver.Dlt645Driver.read_daily_freeze`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Sequence
from datetime import date, datetime, tzinfo
from decimal import Decimal

from drivers.dlt645 import catalogue
from drivers.dlt645.codec import NO_REQUESTED_DATA, normalize_address
from drivers.dlt645.payload import ReadPayload, RefusedBlocks
from drivers.dlt645.values import decode_datetime, decode_ddhh, decode_number, decode_time
from gateway.errors import DecodeError, DeviceException


def nth_previous_settlement(now: datetime, days: Sequence[tuple[int, int]], n: int) -> datetime:
    """The n-th most recent settlement instant at or before ``now`` (n = 1: the last one).

    ``days`` are the meter's settlement days (DD, hh) (04000B01–03). Days that a month does
    not have (e.g. 30 in February) are skipped for that month. Raises ValueError if none.
    """
    if n < 1 or not days:
        raise ValueError("need n >= 1 and at least one settlement day")
    found: list[datetime] = []
    y, m = now.year, now.month
    for _ in range(n + 2 + n // max(1, len(days)) + 12):
        for day, hour in days:
            try:
                t = datetime(y, m, day, hour)
            except ValueError:
                continue
            if t <= now.replace(tzinfo=None):
                found.append(t)
        y, m = (y, m - 1) if m > 1 else (y - 1, 12)
    found = sorted(set(found), reverse=True)
    if len(found) < n:
        raise ValueError("not enough settlement instants")
    return found[n - 1]


async def read_settlement(
    read: ReadPayload, refused: RefusedBlocks, address: str, n: int, timeout: float, tz: tzinfo | None,
    stamps: dict[str, datetime] | None = None,
) -> tuple[datetime | None, dict[str, Decimal]]:
    """The registers frozen at the n-th previous settlement day (上n结算日, DI0 = n).

    Returns (settlement instant, {point: value}); the instant is computed from the
    meter's clock and its settlement days (04000B01–03) and is None when the meter does
    not tell them. Points: ``energy_import_kwh`` (+ ``_t1``..``_t4``), ``energy_export_kwh``
    (+ tariffs) and, when supported, ``energy_import_kvarh``/``energy_export_kvarh``, the
    quadrant reactive totals ``energy_q1_kvarh``..``energy_q4_kvarh`` (0005000n…0008000n)
    and the settlement period's forward active maximum demand ``demand_max_kw``
    (0101000n, XX.XXXX + YYMMDDhhmm). When ``stamps`` is given it receives the demand's time
    (meter local) as ``stamps["demand_max_kw"]`` and ``stamps["demand_max_kw_at"]``, and the
    start of the period that maximum is over (the (n+1)-th previous settlement instant) as
    ``stamps["demand_period_start"]``.
    """
    if not 1 <= n <= 12:
        raise ValueError("settlement snapshots go back 1..12")
    addr = normalize_address(address)
    values: dict[str, Decimal] = {}
    refusal: DeviceException | None = None
    for block, prefix in catalogue.SETTLEMENT_BLOCKS.items():
        try:
            values.update(await _energy_block(read, refused, addr, block | n, prefix, timeout))
        except DeviceException as exc:
            refusal = exc
    for di, name in catalogue.SETTLEMENT_SINGLES.items():
        try:
            payload = await read(addr, di | n, "dlt645", timeout, 4)
            values[name] = decode_number(payload[:4], "XXXXXX.XX", signed=catalogue.is_signed(di))
        except (DeviceException, DecodeError):
            continue
    demand_at: datetime | None = None
    for di, (name, _at_name) in catalogue.SETTLEMENT_DEMAND.items():
        try:
            payload = await read(addr, di | n, "dlt645", timeout, 8)
            values[name] = decode_number(payload[:3], "XX.XXXX")
        except (DeviceException, DecodeError):
            continue
        with contextlib.suppress(DecodeError):
            demand_at = decode_datetime(payload[3:8], "YYMMDDhhmm")
    if not values:
        raise refusal or DeviceException(
            NO_REQUESTED_DATA, "no requested data", f"meter {addr} has no settlement-day data"
        )
    when, before = await _settlement_instants(read, addr, n, timeout)
    if stamps is not None:
        for name, at_name in catalogue.SETTLEMENT_DEMAND.values():
            if name in values and demand_at is not None:
                stamps[name] = stamps[at_name] = demand_at
            if name in values and before is not None:
                stamps["demand_period_start"] = before
    if when is not None and tz is not None:
        when = when.replace(tzinfo=tz)
    return when, values


async def read_daily_freeze(
    read: ReadPayload, address: str, day: date, timeout: float, tz: tzinfo | None,
    points: Collection[str] | None, stamps: dict[str, datetime] | None,
) -> tuple[datetime, dict[str, Decimal]]:
    """The daily freeze the meter took at the start of ``day``, found by date.

    Walks the meter's freeze log (050600nn = time of the nn-th previous freeze) to the
    record whose date is ``day`` — the log may have gaps, so the index is never assumed
    — then reads, with the same nn, the blocks that carry ``points`` (None: all of them;
    see :mod:`drivers.dlt645.catalogue`): 050601nn forward and 050602nn reverse active
    (total + tariffs), 050603nn / 050604nn combined reactive 1 / 2 (the totals →
    ``energy_import_kvarh`` / ``energy_export_kvarh``) and 050609nn forward active
    maximum demand (the total → ``demand_max_kw``; its time, meter local, goes into
    ``stamps["demand_max_kw"]`` when a dict is given, and ``stamps["demand_max_kw_at"]``).

    A meter that answers "no requested data" for a block other than 050601nn simply
    does not freeze that quantity: its points are left out (the caller decides what to
    do instead). Fill bytes (EE/FF, non-BCD) in a value mean "no data" and leave that
    point out too. Returns (freeze time in meter local time, or aware in ``tz``;
    {point: value}). Raises DeviceException (no requested data) when the log has no
    record for ``day`` or the meter refuses the forward active block.
    """
    addr = normalize_address(address)
    n, when = await _find_freeze(read, addr, day, timeout)
    values: dict[str, Decimal] = {}
    for kind in catalogue.daily_freeze_kinds(points):
        di = catalogue.daily_freeze_energy_di(n, kind)
        demand = kind in catalogue.DAILY_FREEZE_DEMAND_KINDS
        try:
            payload = await read(addr, di, "dlt645", timeout, 40 if demand else 20)
        except DeviceException:
            if kind == 1:
                raise
            continue
        if kind in catalogue.DAILY_FREEZE_BLOCKS:
            decode_tariff_block(payload, catalogue.DAILY_FREEZE_BLOCKS[kind], values)
        elif kind in catalogue.DAILY_FREEZE_REACTIVE:
            with contextlib.suppress(DecodeError):
                if len(payload) >= 4:
                    values[catalogue.DAILY_FREEZE_REACTIVE[kind]] = decode_number(
                        payload[:4], "XXXXXX.XX", signed=catalogue.is_signed(di))
        elif kind in catalogue.DAILY_FREEZE_DEMAND and len(payload) >= 8:
            name, at_name = catalogue.DAILY_FREEZE_DEMAND[kind]
            try:
                kw = decode_number(payload[:3], "XX.XXXX")
            except DecodeError:
                continue
            values[name] = kw
            if stamps is not None:
                with contextlib.suppress(DecodeError):
                    stamps[name] = stamps[at_name] = decode_datetime(payload[3:8], "YYMMDDhhmm")
    if tz is not None:
        when = when.replace(tzinfo=tz)
    return when, values


async def _energy_block(
    read: ReadPayload, refused: RefusedBlocks, addr: str, block: int, prefix: str, timeout: float
) -> dict[str, Decimal]:
    """Read an energy block (total + 4 tariffs), falling back to single DIs."""
    out: dict[str, Decimal] = {}
    if block & ~0xFF not in refused.get(addr, ()):
        try:
            payload = await read(addr, block, "dlt645", timeout, 20)
        except DeviceException as exc:
            if not exc.code & NO_REQUESTED_DATA:
                raise
            refused.setdefault(addr, set()).add(block & ~0xFF)
        else:
            decode_tariff_block(payload, prefix, out)
            return out
    refusal: DeviceException | None = None
    for k, suffix in enumerate(catalogue.TARIFF_SUFFIXES):
        di = (block & 0xFFFF00FF) | (k << 8)
        try:
            payload = await read(addr, di, "dlt645", timeout, 4)
            out[prefix + suffix] = decode_number(payload[:4], "XXXXXX.XX")
        except DeviceException as exc:
            refusal = exc
        except DecodeError:
            continue
    if not out and refusal is not None:
        raise refusal
    return out


async def _settlement_instants(read: ReadPayload, addr: str, n: int,
                               timeout: float) -> tuple[datetime | None, datetime | None]:
    """The n-th and (n+1)-th previous settlement instants by the meter's clock and settlement days.

    (None, None) when the meter does not tell them; the (n+1)-th is where the n-th settlement
    period (its demand record) began.
    """
    days: list[tuple[int, int]] = []
    for di in catalogue.SETTLEMENT_DAY_DIS:
        try:
            days.append(decode_ddhh((await read(addr, di, "dlt645", timeout, 2))[:2]))
        except (DeviceException, DecodeError):
            continue
    if not days:
        return None, None
    try:
        dpay = await read(addr, 0x04000101, "dlt645", timeout, 4)
        tpay = await read(addr, 0x04000102, "dlt645", timeout, 3)
        d = decode_datetime(dpay[:4], "YYMMDDWW")
        t = decode_time(tpay[:3])
    except (DeviceException, DecodeError):
        return None, None
    now = datetime.combine(d.date(), t)
    return nth_previous_settlement(now, days, n), nth_previous_settlement(now, days, n + 1)


async def _settlement_instant(read: ReadPayload, addr: str, n: int, timeout: float) -> datetime | None:
    """The n-th previous settlement instant by the meter's clock and settlement days (None: unknown)."""
    instant, _began = await _settlement_instants(read, addr, n, timeout)
    return instant


async def _freeze_time(read: ReadPayload, addr: str, n: int, timeout: float) -> datetime | None:
    """When the n-th previous daily freeze was taken (None: no such record)."""
    try:
        payload = await read(addr, catalogue.daily_freeze_time_di(n), "dlt645", timeout, 5)
        return decode_datetime(payload[:5], "YYMMDDhhmm")
    except DecodeError:
        return None
    except DeviceException as exc:
        if exc.code & NO_REQUESTED_DATA:
            return None
        raise


async def _find_freeze(read: ReadPayload, addr: str, day: date, timeout: float) -> tuple[int, datetime]:
    """(nn, freeze time) of the daily freeze record taken at the start of ``day``."""
    def missing(detail: str) -> DeviceException:
        return DeviceException(NO_REQUESTED_DATA, "no requested data", f"meter {addr}: {detail}")

    latest = await _freeze_time(read, addr, 1, timeout)
    if latest is None:
        raise missing("the meter holds no daily freeze records (05060001 is empty)")
    if day > latest.date():
        raise missing(f"its latest daily freeze is from {latest:%Y-%m-%d %H:%M}; {day} is not frozen yet")
    depth = catalogue.DAILY_FREEZE_DEPTH
    n = min(depth, 1 + (latest.date() - day).days)
    visited: dict[int, datetime | None] = {1: latest}
    for _ in range(depth):
        if n in visited:
            when = visited[n]
        else:
            when = visited[n] = await _freeze_time(read, addr, n, timeout)
        if when is not None and when.date() == day:
            return n, when
        nxt = n - 1 if when is None or when.date() < day else n + 1
        if not 1 <= nxt <= depth or nxt in visited:
            break
        n = nxt
    oldest = min((w for w in visited.values() if w is not None), default=latest)
    if oldest.date() > day:
        raise missing(f"it keeps {depth} daily freezes, back to {oldest:%Y-%m-%d}; {day} is too old")
    raise missing(f"its daily freeze log has no record for {day} (a gap in the log)")


def decode_tariff_block(payload: bytes, prefix: str, out: dict[str, Decimal]) -> None:
    """Total + tariffs 1–4 of an energy data block (XXXXXX.XX each) into ``out``.

    A missing or non-BCD field (a meter with fewer tariffs pads with 0xFF) is left out.
    """
    for k, suffix in enumerate(catalogue.TARIFF_SUFFIXES):
        chunk = payload[4 * k : 4 * k + 4]
        if len(chunk) == 4:
            with contextlib.suppress(DecodeError):
                out[prefix + suffix] = decode_number(chunk, "XXXXXX.XX")
