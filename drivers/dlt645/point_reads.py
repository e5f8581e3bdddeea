"""Reading a plan's points from one DL/T 645 meter: blocks, their fallback, per-point results.

Per step of a :class:`~drivers.dlt645.plan.Dlt645Plan`: a block the meter refuses ("no
requested data", error 0x02; any refusal from a 1997 meter) is remembered for that meter
address and read as its single DIs from then on. Per point: a value that is not a value
(EE/FF fill, non-BCD) → quality ``invalid``; a DI the meter refuses → ``exception``; a
corrupted reply → ``crc_error``. A meter that does not answer the first request →
:class:`~gateway.errors.ReadTimeout` for the whole read; a meter that stops answering
mid-read → the remaining points are ``timeout``; when every request got only corrupted or
foreign replies the read raises that FrameError / WrongAddressError.
"""

from __future__ import annotations

import logging
from datetime import datetime, time

from drivers.dlt645.codec import NO_REQUESTED_DATA, ProtocolName
from drivers.dlt645.meter_clock import complete_clock
from drivers.dlt645.payload import ReadPayload, RefusedBlocks
from drivers.dlt645.plan import Dlt645Plan, PointSlot, ReadStep, di_text
from drivers.dlt645.values import decode_datetime, decode_value
from gateway.errors import DecodeError, DeviceException, FrameError, ReadTimeout
from gateway.model import PointResult

log = logging.getLogger(__name__)


async def read_points(
    read: ReadPayload, refused: RefusedBlocks, addr: str, plan: Dlt645Plan, timeout: float
) -> dict[str, PointResult]:
    """Read every point of ``plan`` from the meter at ``addr`` (one pass, no retries).

    A meter that does not answer the first request raises ReadTimeout; one that stops
    answering mid-read leaves the remaining points ``timeout``. When every request got
    only corrupted or foreign replies the read raises the last FrameError / WrongAddressError.
    """
    out: dict[str, PointResult] = {}
    errors: list[FrameError] = []
    steps = plan.steps
    for i, step in enumerate(steps):
        try:
            await _run_step(read, refused, errors, addr, step, plan.protocol, timeout, out)
        except ReadTimeout as exc:
            if not out:
                raise
            for rest in steps[i:]:
                for name in rest.names:
                    out.setdefault(name, PointResult(None, "timeout", str(exc)))
            break
    if errors and out and all(r.quality == "crc_error" for r in out.values()):
        # Nothing but corrupted or foreign replies: the whole read failed.
        raise errors[-1]
    return out


async def _run_step(
    read: ReadPayload, refused: RefusedBlocks, errors: list[FrameError],
    addr: str, step: ReadStep, protocol: ProtocolName, timeout: float, out: dict[str, PointResult],
) -> None:
    """Read one step into ``out``: its block, or its single DIs when the meter refuses the block."""
    if step.fallback and step.di in refused.get(addr, ()):
        for single in step.fallback:
            await _run_step(read, refused, errors, addr, single, protocol, timeout, out)
        return
    try:
        payload = await read(addr, step.di, protocol, timeout, step.expect)
    except DeviceException as exc:
        if step.fallback and (exc.code & NO_REQUESTED_DATA or protocol == "dlt645-1997"):
            refused.setdefault(addr, set()).add(step.di)
            log.info(
                "meter %s does not support block DI %s (%s); reading its points one by one from now on",
                addr, di_text(step.di, protocol), exc.name,
            )
            for single in step.fallback:
                await _run_step(read, refused, errors, addr, single, protocol, timeout, out)
            return
        for s in step.slots:
            out[s.name] = PointResult(None, "exception", str(exc))
        return
    except FrameError as exc:
        errors.append(exc)
        for s in step.slots:
            out[s.name] = PointResult(None, "crc_error", str(exc))
        return
    payload, clock_time, clock_error = await complete_clock(read, addr, step, protocol, timeout, payload)
    for s in step.slots:
        if clock_error is not None and s.fmt.kind == "date":
            out[s.name] = clock_error
        else:
            out[s.name] = extract(step.di, s, payload, clock_time)


def extract(di: int, slot: PointSlot, payload: bytes, clock_time: time | None) -> PointResult:
    """One point's result from its reply's value bytes (a short reply or fill → ``invalid``)."""
    chunk = payload[slot.offset : slot.offset + slot.fmt.size]
    if len(chunk) < slot.fmt.size:
        return PointResult(
            None, "invalid",
            f"the reply to DI {di:08X} has {len(payload)} value bytes; {slot.name} needs bytes "
            f"{slot.offset}..{slot.offset + slot.fmt.size - 1} (the meter has fewer values)",
        )
    if slot.fmt.kind == "datetime" and not any(chunk):
        # A demand record's time reads 00 00 00 00 00 while the meter has recorded no maximum
        # since its demand reset (the value is 0 then): a real state, not a bad reply.
        return PointResult(None, "good", "the meter has recorded no time for this value yet (all zeros)")
    try:
        if slot.fmt.kind == "date" and clock_time is not None:
            dt = datetime.combine(decode_datetime(chunk, slot.fmt).date(), clock_time)
            return PointResult(dt.isoformat(timespec="seconds"))
        return PointResult(decode_value(chunk, slot.fmt, signed=slot.signed))
    except DecodeError as exc:
        return PointResult(None, "invalid", str(exc))
