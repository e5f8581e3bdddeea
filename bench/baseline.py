"""Baselines on the emulated bus: what a plain master achieves, as a share of the wire limit.

Every case starts a :class:`bench.emulator.BusEmulator` (10 slaves, 8E1 timing, pty at
parity N), runs one master against it in this process's event loop, and prints

    achieved reads/s ÷ the computed wire limit (bench/wire.py),

the t3.5 violations and collisions the emulator counted, the silence the master left after
each reply (p50, against t3.5), the master's CPU-s per 1000 reads, and whether the emulator
kept time well enough for the run to count (its own reply-byte lateness).

Masters:

* ``pymodbus``: pymodbus 3.16 ``AsyncModbusSerialClient`` alone (it does not keep t3.5:
  the emulator should count a violation on nearly every request).
* ``pymodbus+sleep``: pymodbus 3.16 ``AsyncModbusSerialClient`` reading FC03 round-robin
  over the slaves, ``await asyncio.sleep(t3.5)`` after each reply ("a plain pymodbus loop
  with a t3.5 sleep").
* ``bare+sleep`` / ``bare+deadline`` / ``bare+timerfd``: a minimal RTU master (pyserial fd,
  ``loop.add_reader``, a future per request). It waits t3.5 after the reply with a plain
  sleep, with ``asyncio.sleep`` up to a deadline computed from the last byte's arrival
  (asyncio rounds timers up to whole milliseconds), or with a timerfd armed at that deadline
  (:mod:`drivers.transport.precise`, µs precision).
* ``bare-dlt645``: the same minimal master for DL/T 645-2007 C=11 reads (4 FE preamble,
  reply complete by its length field); the next request goes out as soon as the reply's last
  byte is in (DL/T 645 has no t3.5 rule; the meter's Td ≥ 20 ms is the gap).

The measurement window runs from one read's completion to another's, so the rate is exact
in whole cycles: ``reads/s = (completions − 1) / (t_last − t_first)``. Counters of the
emulator are reset one read before the window opens.

Run: ``python -m bench.baseline`` (about 3.5 minutes), ``--quick`` for a 5 s smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

import serial

from bench.emulator import (
    BusEmulator,
    EmulatorStats,
    crc16_modbus,
    dlt645_read_reply,
    dlt645_read_request,
    modbus_read_reply,
    modbus_read_request,
    modbus_register_value,
)
from bench.wire import char_time, dlt645_reads_per_s, modbus_reads_per_s, t35

WaitMode = Literal["sleep", "deadline", "timerfd"]
MasterKind = Literal["pymodbus", "pymodbus+sleep", "bare+sleep", "bare+deadline", "bare+timerfd", "bare-dlt645"]

MODBUS_UNITS: tuple[int, ...] = tuple(range(1, 11))
DLT645_METERS: tuple[str, ...] = tuple(f"{i:012d}" for i in range(1, 11))
DI_SINGLE = 0x00010000
DI_BLOCK = 0x0001FF00
_MAX_READS = 10_000_000


# ---------------------------------------------------------------------------------------
# Measurement window
# ---------------------------------------------------------------------------------------


class Window:
    """Counts completed reads between a warm-up and the end of a fixed duration.

    ``done()`` is called by the master after every read; it returns False when the master
    must stop. The emulator's counters are reset at the end of the warm-up, and the window
    opens at the next completed read.
    """

    def __init__(self, emulator: BusEmulator, warmup_s: float, duration_s: float) -> None:
        """Prepare a window of ``duration_s`` after ``warmup_s`` of warm-up."""
        self.emulator = emulator
        self.warmup_s = warmup_s
        self.duration_s = duration_s
        self.started = time.monotonic()
        self.phase: Literal["warmup", "arming", "open", "closed"] = "warmup"
        self.first = 0.0
        self.last = 0.0
        self.completions = 0
        self.ok = 0
        self.errors = 0
        self.cpu_start = 0.0
        self.cpu_s = 0.0
        self.per_slave: dict[str, int] = {}

    def done(self, ok: bool, slave: str = "") -> bool:
        """Record one finished read (``ok`` False for a timeout or a wrong reply)."""
        now = time.monotonic()
        if self.phase == "warmup":
            if now - self.started >= self.warmup_s:
                self.emulator.reset()
                self.phase = "arming"
        elif self.phase == "arming":
            self.phase = "open"
            self.first = self.last = now
            self.cpu_start = time.process_time()
        elif self.phase == "open":
            self.completions += 1
            self.last = now
            if ok:
                self.ok += 1
                self.per_slave[slave] = self.per_slave.get(slave, 0) + 1
            else:
                self.errors += 1
            if now - self.first >= self.duration_s:
                self.cpu_s = time.process_time() - self.cpu_start
                self.phase = "closed"
        return self.phase != "closed"

    @property
    def elapsed_s(self) -> float:
        """Seconds from the window's first to its last completion."""
        return self.last - self.first

    @property
    def reads_per_s(self) -> float:
        """Successful reads per second inside the window."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0


# ---------------------------------------------------------------------------------------
# A bare asyncio master: pyserial for the port, add_reader for the bytes
# ---------------------------------------------------------------------------------------

Completer = Callable[[bytearray], int | None]


def modbus_reply_length(buf: bytearray) -> int | None:
    """Return the length of the RTU reply at the start of ``buf`` once known, else None."""
    if len(buf) < 3:
        return None
    if buf[1] & 0x80:
        return 5
    return 5 + buf[2]


def dlt645_reply_length(buf: bytearray) -> int | None:
    """Return the length (with FE preamble) of the DL/T 645 reply in ``buf`` once known."""
    start = 0
    while start < len(buf) and buf[start] == 0xFE:
        start += 1
    if len(buf) < start + 10:
        return None
    return start + 12 + buf[start + 9]


class BareMaster:
    """A minimal request/reply master on a serial port, for one bus.

    Bytes are read in a ``loop.add_reader`` callback; the request's future resolves with the
    reply and the ``time.monotonic()`` of the read that completed it (the last byte's arrival,
    as near as the event loop can tell).
    """

    def __init__(self, path: str, baud: int) -> None:
        """Open ``path`` at parity N (a pty rejects E; the emulator times 8E1 anyway)."""
        self.port = serial.Serial(path, baud, parity=serial.PARITY_NONE, timeout=0)
        self.fd = self.port.fileno()
        self.buf = bytearray()
        self.expect: Completer | None = None
        self.future: asyncio.Future[tuple[bytes, float] | None] | None = None
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        now = time.monotonic()
        if self.expect is None or self.future is None or self.future.done():
            return  # stray bytes between transactions: drop
        self.buf += data
        need = self.expect(self.buf)
        if need is not None and len(self.buf) >= need:
            self.future.set_result((bytes(self.buf[:need]), now))

    async def transact(self, request: bytes, expect: Completer, timeout: float) -> tuple[bytes, float] | None:
        """Send ``request``; return (reply, last-byte time), or None after ``timeout``."""
        self.buf.clear()
        self.expect = expect
        fut: asyncio.Future[tuple[bytes, float] | None] = self.loop.create_future()
        self.future = fut
        os.write(self.fd, request)
        handle = self.loop.call_later(timeout, _resolve_none, fut)
        try:
            return await fut
        finally:
            handle.cancel()
            self.expect = None
            self.future = None

    def close(self) -> None:
        """Stop reading and close the port; safe to repeat."""
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.fd)
        self.port.close()


def _resolve_none(fut: asyncio.Future[tuple[bytes, float] | None]) -> None:
    if not fut.done():
        fut.set_result(None)


class DeadlineWaiter(Protocol):
    """Waits until a ``time.monotonic()`` deadline (e.g. ``drivers.transport.precise.PreciseTimer``)."""

    async def wait_until(self, deadline: float) -> None:
        """Return at ``deadline``."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


async def _wait_after_reply(mode: WaitMode, last_byte: float, silence: float, timer: DeadlineWaiter | None) -> None:
    """Keep the inter-frame silence after a reply whose last byte arrived at ``last_byte``."""
    if mode == "sleep" or (mode == "timerfd" and timer is None):
        await asyncio.sleep(silence)
    elif mode == "deadline":
        remaining = last_byte + silence - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)
    elif timer is not None:
        await timer.wait_until(last_byte + silence)


async def bare_modbus_master(
    path: str, baud: int, registers: int, units: Sequence[int], window: Window, mode: WaitMode
) -> None:
    """Poll FC03 reads round-robin with a bare master, keeping t3.5 by ``mode``."""
    master = BareMaster(path, baud)
    timer: DeadlineWaiter | None = None
    if mode == "timerfd":
        from drivers.transport.precise import PreciseTimer

        timer = PreciseTimer()
    silence = t35(baud)
    timeout = 0.1 + 2 * (13 + 2 * registers) * char_time(baud)
    requests = {u: modbus_read_request(u, 3, 0, registers) for u in units}
    replies = {u: modbus_read_reply(u, 3, 0, registers) for u in units}
    try:
        last = time.monotonic()
        for i in range(_MAX_READS):
            unit = units[i % len(units)]
            result = await master.transact(requests[unit], modbus_reply_length, timeout)
            if result is None:
                ok, last = False, time.monotonic()
            else:
                reply, last = result
                ok = reply == replies[unit] and crc16_modbus(reply[:-2]) == reply[-2] | reply[-1] << 8
            if not window.done(ok, str(unit)):
                return
            await _wait_after_reply(mode, last, silence, timer)
    finally:
        master.close()
        if timer is not None:
            timer.close()


async def bare_dlt645_master(path: str, baud: int, di: int, meters: Sequence[str], window: Window) -> None:
    """Poll C=11 reads of ``di`` round-robin; next request as soon as a reply is complete."""
    master = BareMaster(path, baud)
    timeout = 0.6 + 2 * 60 * char_time(baud)
    requests = {m: dlt645_read_request(m, di) for m in meters}
    replies = {m: dlt645_read_reply(m, di) for m in meters}
    try:
        for i in range(_MAX_READS):
            meter = meters[i % len(meters)]
            result = await master.transact(requests[meter], dlt645_reply_length, timeout)
            ok = result is not None and result[0] == replies[meter]
            if not window.done(ok, meter):
                return
    finally:
        master.close()


async def pymodbus_master(
    path: str, baud: int, registers: int, units: Sequence[int], window: Window, keep_silence: bool = True
) -> None:
    """The plain pymodbus loop: FC03 round-robin, ``asyncio.sleep(t3.5)`` after each reply.

    ``keep_silence=False`` is pymodbus alone, which does not keep t3.5 between frames.
    """
    from pymodbus.client import AsyncModbusSerialClient
    from pymodbus.exceptions import ModbusException

    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    client = AsyncModbusSerialClient(
        path, baudrate=baud, parity="N", stopbits=1, bytesize=8, timeout=0.5, retries=0, reconnect_delay=0
    )
    if not await client.connect():
        raise RuntimeError(f"pymodbus could not open {path}")
    silence = t35(baud)
    try:
        for i in range(_MAX_READS):
            unit = units[i % len(units)]
            try:
                rr = await client.read_holding_registers(0, count=registers, device_id=unit)
                ok = not rr.isError() and rr.registers[0] == modbus_register_value(unit, 3, 0)
            except ModbusException:
                ok = False
            if not window.done(ok, str(unit)):
                return
            if keep_silence:
                await asyncio.sleep(silence)
    finally:
        client.close()


# ---------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One baseline run: a master against one emulated bus configuration."""

    name: str
    master: MasterKind
    protocol: Literal["modbus", "dlt645"]
    baud: int
    registers: int = 0
    di: int = 0
    td_s: float = 0.0
    #: What the issue or docs/protocols/serial-timing.md says this master reaches (for the table).
    expected: str = ""

    @property
    def wire_limit(self) -> float:
        """Reads per second the wire allows (8E1)."""
        if self.protocol == "modbus":
            return modbus_reads_per_s(self.baud, self.registers, self.td_s)
        return dlt645_reads_per_s(self.baud, 20 if self.di == DI_BLOCK else 4, self.td_s)


@dataclass
class CaseResult:
    """What a case measured."""

    case: Case
    reads: int
    errors: int
    elapsed_s: float
    reads_per_s: float
    ratio: float
    cpu_s_per_1000: float
    t35_violations: int
    collisions: int
    silence_p50_ms: float
    silence_min_ms: float
    lateness_p99_ms: float
    lost_fraction: float
    trustworthy: bool
    per_slave: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        """One line of the results table."""
        c = self.case
        return (
            f"{c.name:<34} {self.reads_per_s:8.2f} {c.wire_limit:8.2f} {self.ratio:7.3f} "
            f"{self.t35_violations:5d} {self.collisions:5d} {self.errors:5d} "
            f"{self.silence_p50_ms:7.3f} {self.cpu_s_per_1000:7.3f} {self.lateness_p99_ms:7.3f} "
            f"{'yes' if self.trustworthy else 'NO':>5}  {c.expected}"
        )


HEADER = (
    f"{'case':<34} {'reads/s':>8} {'limit':>8} {'ratio':>7} {'viol':>5} {'coll':>5} {'err':>5} "
    f"{'sil p50':>7} {'cpu/1k':>7} {'lat p99':>7} {'trust':>5}  expected"
)


def baseline_cases() -> list[Case]:
    """The baseline matrix of issue 6."""
    cases: list[Case] = []
    masters: tuple[MasterKind, ...] = ("pymodbus", "pymodbus+sleep", "bare+sleep", "bare+deadline", "bare+timerfd")
    for baud, regs, expect_pm in ((9600, 20, "0.98"), (38400, 2, "0.85-0.93")):
        for master in masters:
            expected = {"pymodbus+sleep": expect_pm, "pymodbus": "violates t3.5"}.get(master, "")
            cases.append(Case(f"{master} {baud}/{regs}r Td0", master, "modbus", baud, regs, expected=expected))
    for di, label in ((DI_SINGLE, "single"), (DI_BLOCK, "block")):
        name = f"bare-dlt645 2400 {label} Td20"
        cases.append(Case(name, "bare-dlt645", "dlt645", 2400, di=di, td_s=0.020, expected="0.997"))
    return cases


async def _drive(case: Case, path: str, window: Window) -> None:
    if case.master in ("pymodbus", "pymodbus+sleep"):
        keep = case.master == "pymodbus+sleep"
        await pymodbus_master(path, case.baud, case.registers, MODBUS_UNITS, window, keep)
    elif case.master == "bare-dlt645":
        await bare_dlt645_master(path, case.baud, case.di, DLT645_METERS, window)
    else:
        mode: WaitMode = case.master.split("+")[1]  # type: ignore[assignment]
        await bare_modbus_master(path, case.baud, case.registers, MODBUS_UNITS, window, mode)


def summarise(case: Case, window: Window, stats: EmulatorStats) -> CaseResult:
    """Combine the master's window and the emulator's statistics into a result."""
    reads = window.ok
    return CaseResult(
        case=case,
        reads=reads,
        errors=window.errors,
        elapsed_s=window.elapsed_s,
        reads_per_s=window.reads_per_s,
        ratio=window.reads_per_s / case.wire_limit,
        cpu_s_per_1000=1000 * window.cpu_s / reads if reads else float("nan"),
        t35_violations=stats.t35_violations,
        collisions=stats.collisions,
        silence_p50_ms=stats.silence_after_reply.p50 * 1e3,
        silence_min_ms=stats.silence_after_reply.min * 1e3,
        lateness_p99_ms=stats.lateness.p99 * 1e3,
        lost_fraction=stats.lost_fraction,
        trustworthy=stats.trustworthy(),
        per_slave=dict(window.per_slave),
    )


def run_case(case: Case, duration_s: float, warmup_s: float) -> CaseResult:
    """Start an emulator for ``case``, run its master, return the result."""
    slaves: Sequence[int | str] = MODBUS_UNITS if case.protocol == "modbus" else DLT645_METERS
    emu = BusEmulator(case.protocol, case.baud, slaves=slaves, td_s=case.td_s)
    path = emu.start()
    try:
        window = Window(emu, warmup_s, duration_s)
        budget = warmup_s + duration_s + 30.0
        asyncio.run(asyncio.wait_for(_drive(case, path, window), budget))
        stats = emu.stop()
    finally:
        emu.kill()
    return summarise(case, window, stats)


def main(argv: list[str] | None = None) -> int:
    """Run the baseline matrix and print the table; exit 1 if any run was untrustworthy."""
    ap = argparse.ArgumentParser(description="Baselines against the emulated RS-485 bus (issue 6).")
    ap.add_argument("--duration", type=float, default=15.0, help="measured seconds per case")
    ap.add_argument("--warmup", type=float, default=1.5, help="warm-up seconds per case")
    ap.add_argument("--quick", action="store_true", help="5 s per case, 0.5 s warm-up")
    ap.add_argument("--only", default="", help="run cases whose name contains this text")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)
    duration, warmup = (5.0, 0.5) if args.quick else (args.duration, args.warmup)
    cases = [c for c in baseline_cases() if args.only in c.name]
    print(f"# baselines: {len(cases)} cases × {duration:g} s (+{warmup:g} s warm-up), 10 slaves, 8E1 timing")
    print(HEADER, flush=True)
    results: list[CaseResult] = []
    for case in cases:
        result = run_case(case, duration, warmup)
        results.append(result)
        print(result.row(), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in results], fh, indent=2)
    untrusted = [r.case.name for r in results if not r.trustworthy]
    if untrusted:
        print(f"# emulator lateness too high, discard: {', '.join(untrusted)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
