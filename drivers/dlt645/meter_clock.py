"""The meter's clock as a point: the date DI completed by the time DI (``meter_clock``).

A profile maps ``meter_clock`` to the date DI (``04000101``, YYMMDDWW); the plan gives that
step the time DI (``04000102``, hhmmss) that completes it. The time is read after the date;
when it is in the first seconds after midnight the date may be from the day before, so the
date is read again. The point reads then report ``YYYY-MM-DDThh:mm:ss`` in the meter's own
local time.
"""

from __future__ import annotations

from datetime import time
from typing import Final

from drivers.dlt645.codec import ProtocolName
from drivers.dlt645.payload import ReadPayload
from drivers.dlt645.plan import ReadStep
from drivers.dlt645.values import decode_time
from gateway.errors import DecodeError, DeviceException, FrameError
from gateway.model import PointResult

MIDNIGHT_GUARD: Final = time(0, 0, 10)
"""A meter time before this may go with the previous day's date: the date is read again."""


async def complete_clock(
    read: ReadPayload, addr: str, step: ReadStep, protocol: ProtocolName, timeout: float, payload: bytes
) -> tuple[bytes, time | None, PointResult | None]:
    """Read the time that completes ``step``'s date, re-reading the date after midnight.

    Returns (the date step's payload, maybe re-read; the meter's time of day or None; the
    result every date point of the step gets instead when the time could not be read, or
    None). A step without a time DI is returned as it is. ReadTimeout propagates.
    """
    clock_time: time | None = None
    clock_error: PointResult | None = None
    if step.clock_time_di is None:
        return payload, clock_time, clock_error
    try:
        tpay = await read(addr, step.clock_time_di, protocol, timeout, 3)
        clock_time = decode_time(tpay[:3])
        if clock_time < MIDNIGHT_GUARD:
            # The date may have been read just before midnight: read it again.
            payload = await read(addr, step.di, protocol, timeout, step.expect)
    except DeviceException as exc:
        clock_error = PointResult(None, "exception", f"meter time: {exc}")
    except FrameError as exc:
        clock_error = PointResult(None, "crc_error", f"meter time: {exc}")
    except DecodeError as exc:
        clock_error = PointResult(None, "invalid", f"meter time: {exc}")
    return payload, clock_time, clock_error
