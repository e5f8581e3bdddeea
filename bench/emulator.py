"""An RS-485 bus emulator on a pty: the wire and N slaves, with true character timing.

A benchmark and test utility, never in the runtime path. A pty delivers bytes in
microseconds whatever the baud rate, so a gateway polling a pty learns nothing about how it
uses a real 9600-baud bus. This emulator owns the pty's master side and plays the wire:

* **Character timing.** Every byte takes ``Tc = bits_per_char / baud`` on the wire. The pty is
  opened by the gateway at parity N (a pty rejects even parity with EINVAL), while the
  emulator times 11-bit 8E1 characters by default. A request the master writes in one go is
  queued on the virtual wire byte after byte, as a UART drains its FIFO; each reply byte is
  written to the pty at the absolute deadline at which its stop bit would end on a real bus
  (``reply_start + (i + 1)·Tc``). Waiting uses ``select`` (µs resolution, timer slack set to
  1 ns) and busy-waits only for the last ``spin_s`` (0.15 ms by default) before a deadline.
* **One talker at a time.** A reply starts after the request's end, plus t3.5 for Modbus RTU
  (the slave recognises the end of a request by 3.5 characters of silence; DL/T 645 by its
  length field), plus the turnaround ``td_s``. Master bytes whose wire time overlaps a reply
  are **collisions**: counted, dropped, and the frame they belong to is garbled. A request
  completing while another reply is pending is a collision too, and gets no reply.
* **t3.5 violations** (Modbus): a request whose first byte starts less than t3.5 after the
  previous reply's last byte. The request is still answered (a real bus might merge frames;
  the count is the finding). A gap longer than t1.5 inside a request discards the frame, as
  a real slave would (``intra_frame_gaps``).
* **Slaves.** Modbus RTU: FC03/FC04 reads of 1..125 registers, answered with
  :func:`modbus_register_value`; other function codes get exception 01, bad counts 03.
  DL/T 645-2007 (Td should be 20..500 ms, §5.3; less is allowed for experiments): C=11
  reads of single DIs and blocks (``0001FF00`` → 5 values), answered with
  :func:`dlt645_value`; a DI it does not know gets the abnormal reply D1 / 0x02;
  C=13 to ``AAAAAAAAAAAA`` answers the address when one slave is live.
  DL/T 698.45 (frames end by their length field, as DL/T 645's): GET requests answered by
  the gateway's own pure meter-side codec (:mod:`drivers.dlt698.responder`) from a state
  holding :func:`dlt698_energy` as the energy registers ``00100200`` (total + 4 tariffs),
  DAR 6 for any other OAD; a wildcard address answers when one slave is live. Unknown
  addresses, broadcasts, bad CRCs or checksums, and **dead** slaves get silence.
* **Self-report.** :class:`EmulatorStats` carries p50/p99/max of reply-byte release
  lateness, the time the master lost to the emulator's lateness (``lost_fraction``), and
  :meth:`EmulatorStats.trustworthy`, so a run on a busy machine can be discarded. The
  process asks for ``SCHED_FIFO`` priority 1 where permitted (see :func:`_raise_priority`:
  at normal priority ~1 % of bytes were over 1 ms late here). It also
  reports the silences the master left after replies (min/p50/p99): how close the master
  keeps t3.5 without oversleeping.

The emulator runs in its own process (a ``python -m bench.emulator`` subprocess: no shared
GIL with the gateway's event loop, nothing of the parent's loop or threads inherited, and
no re-import of the caller's main module) and is driven over its stdin/stdout::

    emu = BusEmulator("modbus", 9600, slaves=range(1, 11), td_s=0.0, dead={7})
    path = emu.start()          # "/dev/pts/N": open it at parity N
    ...                         # poll it
    stats = emu.stop()          # EmulatorStats
    assert stats.trustworthy()

Run ``python -m bench.emulator --help`` for a stand-alone emulator on a pty.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import select
import subprocess
import sys
import time
import tty
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO, Literal

from bench.wire import BITS_8E1, char_time, t15, t35

Protocol = Literal["modbus", "dlt645", "dlt698"]
PROTOCOLS: tuple[Protocol, ...] = ("modbus", "dlt645", "dlt698")

#: The emulator process exits by itself after this long, whatever the parent does.
DEFAULT_MAX_RUN_S = 1800.0
#: Busy-wait only this close to a byte deadline; ``select`` sleeps before that.
DEFAULT_SPIN_S = 0.00015
#: DL/T 645 inter-byte limit Tb (§5.3): a partial frame older than this is discarded.
DLT645_TB_S = 0.5
#: Reply-byte lateness (p99) above which a run is not trusted by default, in seconds.
TRUST_P99_LATENESS_S = 0.0005
#: Share of the run lost to late last reply bytes above which a run is not trusted.
TRUST_LOST_FRACTION = 0.005

_PR_SET_TIMERSLACK = 29
_MAX_LOOP_ITERATIONS = 2_000_000_000


# --------------------------------------------------------------------------------------
# Modbus RTU slave model
# --------------------------------------------------------------------------------------


def _make_crc_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _make_crc_table()


def crc16_modbus(data: bytes | bytearray) -> int:
    """Return the Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF) of ``data``."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes | bytearray) -> bytes:
    """Return ``frame`` with its Modbus CRC appended, low byte first."""
    crc = crc16_modbus(frame)
    return bytes(frame) + bytes((crc & 0xFF, crc >> 8))


def modbus_register_value(unit: int, function: int, address: int) -> int:
    """Return the deterministic content of register ``address`` of slave ``unit``.

    Holding registers (FC03) and input registers (FC04) differ by bit 15, so a test can tell
    which table a reply came from.
    """
    value = ((unit & 0xFF) << 8) ^ (address & 0xFFFF)
    if function == 4:
        value ^= 0x8000
    return value & 0xFFFF


def modbus_read_request(unit: int, function: int, address: int, count: int) -> bytes:
    """Return a CRC'd FC03/FC04 read request (8 bytes)."""
    return with_crc(bytes((unit, function, address >> 8, address & 0xFF, count >> 8, count & 0xFF)))


def modbus_read_reply(unit: int, function: int, address: int, count: int) -> bytes:
    """Return the reply the emulator sends to a valid FC03/FC04 read (5 + 2·count bytes)."""
    body = bytearray((unit, function, 2 * count))
    for reg in range(address, address + count):
        value = modbus_register_value(unit, function, reg)
        body += bytes((value >> 8, value & 0xFF))
    return with_crc(body)


def _modbus_answer(frame: bytes, unit_present: bool) -> bytes | None:
    """Return the reply to a CRC-checked request frame addressed to a live slave."""
    unit, function = frame[0], frame[1]
    if not unit_present:
        return None
    if function in (3, 4):
        if len(frame) != 8:
            return with_crc(bytes((unit, function | 0x80, 0x03)))
        address = (frame[2] << 8) | frame[3]
        count = (frame[4] << 8) | frame[5]
        if not 1 <= count <= 125:
            return with_crc(bytes((unit, function | 0x80, 0x03)))
        if address + count > 0x10000:
            return with_crc(bytes((unit, function | 0x80, 0x02)))
        return modbus_read_reply(unit, function, address, count)
    return with_crc(bytes((unit, (function | 0x80) & 0xFF, 0x01)))


# --------------------------------------------------------------------------------------
# DL/T 645-2007 slave model
# --------------------------------------------------------------------------------------

DLT645_BROADCAST = "999999999999"
DLT645_WILDCARD = "AAAAAAAAAAAA"


def _bcd(value: int, nbytes: int) -> bytes:
    """Return ``value`` as ``nbytes`` BCD bytes, least significant byte first."""
    out = bytearray()
    for _ in range(nbytes):
        value, low = divmod(value, 10)
        value, high = divmod(value, 10)
        out.append((high << 4) | low)
    return bytes(out)


def dlt645_address_bytes(address: str) -> bytes:
    """Return a 12-digit meter address in wire order (least significant byte first)."""
    if len(address) != 12:
        raise ValueError(f"a DL/T 645 address has 12 digits, got {address!r}")
    return bytes.fromhex(address)[::-1]


def _address_seed(address: str) -> int:
    digits = "".join(ch for ch in address if ch.isdigit()) or "0"
    return int(digits) % 9973


def _dlt645_single(address: str, di: int) -> bytes | None:
    """Return the raw value bytes (before +0x33) of a single (non-block) DI, or None."""
    di3, di2, di1, di0 = (di >> 24) & 0xFF, (di >> 16) & 0xFF, (di >> 8) & 0xFF, di & 0xFF
    seed = _address_seed(address)
    if di3 == 0x00 and di2 <= 0x0A and di1 <= 0x3F and di0 <= 0x0C:
        # Energy, XXXXXX.XX: distinct per meter, type, tariff and settlement period.
        return _bcd(seed * 1000 + di2 * 100 + di1 * 10 + di0, 4)
    if di3 == 0x02:
        if di2 == 0x01 and 1 <= di1 <= 3 and di0 == 0:  # voltage XXX.X V
            return _bcd(2200 + di1 + seed % 10, 2)
        if di2 == 0x02 and 1 <= di1 <= 3 and di0 == 0:  # current XXX.XXX A
            return _bcd(5000 + 100 * di1 + seed % 100, 3)
        if di2 in (0x03, 0x04, 0x05) and di1 <= 3 and di0 == 0:  # power XX.XXXX
            return _bcd(12345 + 1000 * di1 + seed % 100, 3)
        if di2 == 0x06 and di1 <= 3 and di0 == 0:  # power factor X.XXX
            return _bcd(980 + di1, 2)
        if di == 0x02800002:  # frequency XX.XX Hz
            return _bcd(5000, 2)
    if di == 0x04000101:  # date YYMMDDWW: 2024-05-01, Wednesday
        return bytes((0x03, 0x01, 0x05, 0x24))
    if di == 0x04000102:  # time hhmmss 12:00:00
        return bytes((0x00, 0x00, 0x12))
    if di == 0x04000401:  # communication address
        return dlt645_address_bytes(address)
    return None


#: Block DIs (``DI1 = FF``), keyed by (DI3, DI2; -1 = any energy type): the DI1 values of
#: their members, in the order the reply concatenates them.
_BLOCKS: dict[tuple[int, int], tuple[int, ...]] = {
    (0x00, -1): (0, 1, 2, 3, 4),  # energy: total + tariffs 1-4 (尖峰平谷)
    (0x02, 0x01): (1, 2, 3),  # Ua Ub Uc
    (0x02, 0x02): (1, 2, 3),  # Ia Ib Ic
    (0x02, 0x03): (0, 1, 2, 3),  # P total, A, B, C
    (0x02, 0x04): (0, 1, 2, 3),
    (0x02, 0x05): (0, 1, 2, 3),
    (0x02, 0x06): (0, 1, 2, 3),  # PF total, A, B, C
}


def dlt645_value(address: str, di: int) -> bytes | None:
    """Return the raw value bytes (before +0x33) meter ``address`` holds for ``di``, or None.

    Energy DIs (DI3 = 00) give a 4-byte BCD XXXXXX.XX derived from the address, type, tariff
    and period; ``DI1 = FF`` blocks concatenate total and tariffs 1–4 (20 bytes). Voltage,
    current, power, power factor (singles and ``FF`` blocks), frequency ``02800002``, date,
    time and address are also known. Anything else returns None (the meter answers D1/02).
    """
    di3, di2, di1 = (di >> 24) & 0xFF, (di >> 16) & 0xFF, (di >> 8) & 0xFF
    if di1 == 0xFF:
        key = (di3, -1) if di3 == 0x00 else (di3, di2)
        block = _BLOCKS.get(key)
        if block is None:
            return None
        out = bytearray()
        for member in block:
            value = _dlt645_single(address, (di & ~0xFF00) | (member << 8))
            if value is None:
                return None
            out += value
        return bytes(out)
    return _dlt645_single(address, di)


def dlt645_frame(address: str, control: int, data: bytes, preamble: int = 0) -> bytes:
    """Return a DL/T 645 frame: FE×preamble 68 A0..A5 68 C L DATA+0x33 CS 16."""
    body = bytearray(b"\x68")
    body += dlt645_address_bytes(address)
    body += bytes((0x68, control, len(data)))
    body += bytes((b + 0x33) & 0xFF for b in data)
    body.append(sum(body) & 0xFF)
    body.append(0x16)
    return b"\xfe" * preamble + bytes(body)


def dlt645_read_request(address: str, di: int, preamble: int = 4) -> bytes:
    """Return a C=11 read request for ``di`` (DI0 first on the wire)."""
    return dlt645_frame(address, 0x11, di.to_bytes(4, "little"), preamble)


def dlt645_read_reply(address: str, di: int, preamble: int = 4) -> bytes:
    """Return the reply the emulator sends to a C=11 read of ``di`` (C=91 or D1/02)."""
    value = dlt645_value(address, di)
    if value is None:
        return dlt645_frame(address, 0xD1, b"\x02", preamble)
    return dlt645_frame(address, 0x91, di.to_bytes(4, "little") + value, preamble)


# --------------------------------------------------------------------------------------
# DL/T 698.45 slave model
# --------------------------------------------------------------------------------------

#: Energy registers a DL/T 698.45 slave holds: ``00100200``, total and tariffs 1-4.
DLT698_ENERGY_OAD = 0x00100200
#: The base of the tariff OADs: ``00100201`` is the total, ``00100205`` tariff 4.
DLT698_ENERGY_TOTAL_OAD = 0x00100201


def dlt698_energy(address: str, index: int) -> int:
    """Return element ``index`` (1 = total, 2..5 = tariffs 1-4) of meter ``address``'s forward
    active energy, in 0.01 kWh (the register's scaler −2), distinct per meter and tariff."""
    return _address_seed(address) * 1000 + index


def _dlt698_state(address: str) -> Any:
    """The responder's :class:`drivers.dlt698.responder.MeterState` of slave ``address``."""
    from datetime import datetime

    from drivers.dlt698.axdr import Data, DataType, array
    from drivers.dlt698.frame import ServerAddress
    from drivers.dlt698.responder import MeterState

    energy = array(*(Data(DataType.DOUBLE_LONG_UNSIGNED, dlt698_energy(address, k)) for k in range(1, 6)))
    return MeterState(ServerAddress.single(address), datetime(2024, 5, 1, 12), {DLT698_ENERGY_OAD: energy})


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Percentiles:
    """Order statistics of a sample, in seconds."""

    count: int = 0
    min: float = 0.0
    p50: float = 0.0
    p99: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, sample: list[float]) -> Percentiles:
        """Summarise ``sample`` (empty → all zero)."""
        if not sample:
            return cls()
        ordered = sorted(sample)
        n = len(ordered)
        return cls(
            count=n,
            min=ordered[0],
            p50=ordered[(n - 1) // 2],
            p99=ordered[min(n - 1, int(0.99 * (n - 1) + 0.5))],
            max=ordered[-1],
        )

    def ms(self) -> str:
        """Format as ``p50/p99/max`` in milliseconds."""
        return f"{self.p50 * 1e3:.3f}/{self.p99 * 1e3:.3f}/{self.max * 1e3:.3f} ms"


@dataclass(frozen=True)
class EmulatorStats:
    """What the emulator saw on the wire, and how faithfully it kept time."""

    protocol: str
    baud: int
    bits_per_char: int
    td_s: float
    #: Seconds since start or the last reset.
    elapsed_s: float
    #: Complete frames the master put on the wire (valid or not).
    requests: int
    #: Replies the slaves sent (normal and exception/abnormal).
    replies: int
    #: Replies per slave address (str for both protocols).
    replies_by_slave: dict[str, int]
    #: Exception (Modbus) or abnormal (DL/T 645) replies among ``replies``.
    exception_replies: int
    #: Frames dropped for a bad CRC/checksum or a malformed layout.
    bad_frames: int
    #: Valid frames for an address no slave has.
    unknown_address: int
    #: Valid frames for a dead slave (silence).
    dead_requests: int
    #: Broadcast frames (never answered).
    broadcasts: int
    #: Modbus requests that started less than t3.5 after the previous reply ended.
    t35_violations: int
    #: Master bytes on the wire while a reply was, plus requests completed while a reply pended.
    collisions: int
    #: Modbus frames discarded for a gap longer than t1.5 between two of their bytes.
    intra_frame_gaps: int
    #: Reply bytes that could not be written (the pty's input queue was full).
    tx_dropped: int
    #: Reply bytes written.
    reply_bytes: int
    #: Lateness of every reply byte's release against its absolute deadline.
    lateness: Percentiles
    #: Lateness of each reply's last byte (what delays the master).
    last_byte_lateness: Percentiles
    #: Sum of the last-byte lateness over all replies, in seconds.
    lost_s: float
    #: Silence between a reply's last byte and the master's next request (Modbus: ≥ t3.5).
    silence_after_reply: Percentiles
    #: perf_counter() of the first request byte and of the last reply's end (0 if none).
    first_request_at: float = 0.0
    last_reply_end_at: float = 0.0
    #: Scheduling class the emulator process got ("SCHED_FIFO 1", "nice -10", "normal").
    scheduling: str = "normal"

    @property
    def lost_fraction(self) -> float:
        """Share of the run the master spent waiting on the emulator's lateness."""
        return self.lost_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def trustworthy(
        self, max_p99_s: float = TRUST_P99_LATENESS_S, max_lost_fraction: float = TRUST_LOST_FRACTION
    ) -> bool:
        """Return True when the emulator kept time well enough for the run's ratios to count."""
        return self.lateness.p99 <= max_p99_s and self.lost_fraction <= max_lost_fraction and self.tx_dropped == 0

    def summary(self) -> str:
        """Return a one-paragraph human summary."""
        return (
            f"{self.protocol} {self.baud} bd {self.bits_per_char}-bit Td {self.td_s * 1e3:g} ms: "
            f"{self.requests} requests, {self.replies} replies in {self.elapsed_s:.2f} s; "
            f"t3.5 violations {self.t35_violations}, collisions {self.collisions}, "
            f"bad frames {self.bad_frames}, unknown {self.unknown_address}, dead {self.dead_requests}, "
            f"gaps {self.intra_frame_gaps}; lateness p50/p99/max {self.lateness.ms()} ({self.scheduling}), "
            f"lost {self.lost_fraction * 100:.3f} %, silence after reply min "
            f"{self.silence_after_reply.min * 1e3:.3f} p50 {self.silence_after_reply.p50 * 1e3:.3f} ms; "
            f"{'trustworthy' if self.trustworthy() else 'NOT TRUSTWORTHY'}"
        )


# --------------------------------------------------------------------------------------
# The engine (runs in the emulator process)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator process needs; picklable."""

    protocol: Protocol
    baud: int
    bits_per_char: int
    slaves: tuple[str, ...]
    dead: frozenset[str]
    td_s: float
    reply_preamble: int
    spin_s: float
    max_run_s: float
    realtime: bool = True


def _norm_slave(protocol: Protocol, slave: int | str) -> str:
    if protocol == "modbus":
        unit = int(slave)
        if not 1 <= unit <= 247:
            raise ValueError(f"a Modbus slave address is 1..247, got {slave!r}")
        return str(unit)
    text = str(slave).upper()
    if len(text) != 12:
        raise ValueError(f"a DL/T 645 or 698.45 address has 12 digits, got {slave!r}")
    bytes.fromhex(text)
    return text


class _Engine:
    """The wire and the slaves. Single-threaded; all times are ``time.perf_counter()``."""

    def __init__(self, cfg: EmulatorConfig, fd: int) -> None:
        self.cfg = cfg
        self.fd = fd
        self.tc = char_time(cfg.baud, cfg.bits_per_char)
        self.t35 = t35(cfg.baud, cfg.bits_per_char)
        self.t15 = t15(cfg.baud, cfg.bits_per_char)
        self.modbus = cfg.protocol == "modbus"
        self.dlt698 = cfg.protocol == "dlt698"
        self.states = {s: _dlt698_state(s) for s in cfg.slaves} if self.dlt698 else {}
        self.live = {s for s in cfg.slaves if s not in cfg.dead}
        self.known = set(cfg.slaves)
        # master → wire
        self.rx = bytearray()
        self.rx_wire_end = 0.0
        self.rx_garbled = False
        self.rx_gap = False
        self.master_free_at = 0.0
        # slave → wire: one reply at a time
        self.tx = b""
        self.tx_slave = ""
        self.tx_start = 0.0
        self.tx_index = 0
        self.last_reply_end: float | None = None
        self.awaiting_first_after_reply = False
        self.scheduling = "normal"
        self.reset(time.perf_counter())

    # -- counters -------------------------------------------------------------------
    def reset(self, now: float) -> None:
        """Zero every counter; the run's clock restarts at ``now``."""
        self.started = now
        self.requests = 0
        self.replies = 0
        self.replies_by_slave: dict[str, int] = {}
        self.exception_replies = 0
        self.bad_frames = 0
        self.unknown_address = 0
        self.dead_requests = 0
        self.broadcasts = 0
        self.violations = 0
        self.collisions = 0
        self.gaps = 0
        self.tx_dropped = 0
        self.reply_bytes = 0
        self.lateness: list[float] = []
        self.last_lateness: list[float] = []
        self.silences: list[float] = []
        self.first_request_at = 0.0
        self.last_reply_end_at = 0.0

    def stats(self, now: float) -> EmulatorStats:
        """Return the counters as an :class:`EmulatorStats`."""
        return EmulatorStats(
            protocol=self.cfg.protocol,
            baud=self.cfg.baud,
            bits_per_char=self.cfg.bits_per_char,
            td_s=self.cfg.td_s,
            elapsed_s=now - self.started,
            requests=self.requests,
            replies=self.replies,
            replies_by_slave=dict(self.replies_by_slave),
            exception_replies=self.exception_replies,
            bad_frames=self.bad_frames,
            unknown_address=self.unknown_address,
            dead_requests=self.dead_requests,
            broadcasts=self.broadcasts,
            t35_violations=self.violations,
            collisions=self.collisions,
            intra_frame_gaps=self.gaps,
            tx_dropped=self.tx_dropped,
            reply_bytes=self.reply_bytes,
            lateness=Percentiles.of(self.lateness),
            last_byte_lateness=Percentiles.of(self.last_lateness),
            lost_s=sum(self.last_lateness),
            silence_after_reply=Percentiles.of(self.silences),
            first_request_at=self.first_request_at,
            last_reply_end_at=self.last_reply_end_at,
            scheduling=self.scheduling,
        )

    # -- master side ------------------------------------------------------------------
    def on_bytes(self, data: bytes, now: float) -> None:
        """Queue bytes the master wrote at ``now`` on the virtual wire, one ``Tc`` each."""
        tc = self.tc
        for byte in data:
            start = max(now, self.master_free_at)
            end = start + tc
            self.master_free_at = end
            if self.first_request_at == 0.0:
                self.first_request_at = start
            if self.rx and self.modbus and start >= self.rx_wire_end + self.t35:
                self.complete_frame()  # silence ended the previous frame before this byte
            if self.tx and start < self.tx_start + len(self.tx) * tc and end > self.tx_start:
                self.collisions += 1
                self.rx_garbled = True
                continue
            if not self.rx:
                self.rx_gap = False
                self.rx_garbled = False
                if self.awaiting_first_after_reply and self.last_reply_end is not None:
                    silence = start - self.last_reply_end
                    self.silences.append(silence)
                    self.awaiting_first_after_reply = False
                    if self.modbus and silence < self.t35:
                        self.violations += 1
            elif self.modbus and start - self.rx_wire_end > self.t15:
                self.rx_gap = True
            self.rx.append(byte)
            self.rx_wire_end = end
            if self.dlt698:
                self.dlt698_scan()
            elif not self.modbus:
                self.dlt645_scan()

    def frame_timer(self) -> float | None:
        """Return when the frame in reception must be completed or abandoned."""
        if not self.rx:
            return None
        if self.modbus:
            return self.rx_wire_end + self.t35
        return self.rx_wire_end + DLT645_TB_S

    def on_frame_timer(self) -> None:
        """The silence after the last byte elapsed: finish (Modbus) or drop (DL/T 645)."""
        if self.modbus:
            self.complete_frame()
        else:
            self.bad_frames += 1
            self.rx.clear()

    def complete_frame(self) -> None:
        """Handle a Modbus frame ended by t3.5 of silence."""
        frame = bytes(self.rx)
        end = self.rx_wire_end
        self.rx.clear()
        self.requests += 1
        if self.rx_garbled:
            self.bad_frames += 1
            return
        if self.rx_gap:
            self.gaps += 1
            return
        if len(frame) < 4 or crc16_modbus(frame[:-2]) != frame[-2] | (frame[-1] << 8):
            self.bad_frames += 1
            return
        unit = frame[0]
        if unit == 0:
            self.broadcasts += 1
            return
        key = str(unit)
        if not self.answers(key):
            return
        reply = _modbus_answer(frame, True)
        if reply is not None:
            if reply[1] & 0x80:
                self.exception_replies += 1
            self.schedule(reply, key, end + self.t35 + self.cfg.td_s)

    def dlt645_scan(self) -> None:
        """Resynchronise on 0x68 and complete a DL/T 645 frame by its length field."""
        rx = self.rx
        for _ in range(len(rx) + 1):  # each pass drops at least one byte or stops
            # Skip the FE preamble and any garbage before the first 0x68.
            skip = 0
            while skip < len(rx) and rx[skip] != 0x68:
                skip += 1
            if skip:
                if any(b != 0xFE for b in rx[:skip]):
                    self.bad_frames += 1
                del rx[:skip]
            if len(rx) >= 8 and rx[7] != 0x68:
                self.bad_frames += 1
                del rx[:1]
                continue
            break
        if len(rx) < 10:
            return
        length = 12 + rx[9]
        if len(rx) < length:
            return
        frame = bytes(rx[:length])
        del rx[:length]
        self.requests += 1
        end = self.rx_wire_end
        if self.rx_garbled:
            self.bad_frames += 1
            return
        if frame[-1] != 0x16 or sum(frame[:-2]) & 0xFF != frame[-2] or frame[8] & 0x80:
            self.bad_frames += 1
            return
        address = frame[1:7][::-1].hex().upper()
        control = frame[8]
        data = bytes((b - 0x33) & 0xFF for b in frame[10:-2])
        if address == DLT645_BROADCAST:
            self.broadcasts += 1
            return
        if address == DLT645_WILDCARD and control == 0x13:
            if len(self.live) == 1 and len(self.known) == 1:
                (only,) = self.live
                self.schedule(
                    dlt645_frame(only, 0x93, dlt645_address_bytes(only), self.cfg.reply_preamble),
                    only,
                    end + self.cfg.td_s,
                )
            return
        if not self.answers(address):
            return
        p = self.cfg.reply_preamble
        if control == 0x11 and len(data) >= 4:
            di = int.from_bytes(data[:4], "little")
            reply = dlt645_read_reply(address, di, p)
            if reply[p + 8] != 0x91:
                self.exception_replies += 1
        elif control == 0x13:
            reply = dlt645_frame(address, 0x93, dlt645_address_bytes(address), p)
        else:
            reply = dlt645_frame(address, (control | 0xC0) & 0xFF, b"\x04", p)
            self.exception_replies += 1
        self.schedule(reply, address, end + self.cfg.td_s)

    def dlt698_scan(self) -> None:
        """Complete a DL/T 698.45 frame by its length field; answer it through the responder."""
        from drivers.dlt698.frame import AddressType, scan
        from drivers.dlt698.responder import respond

        rx = self.rx
        start = rx.find(0x68)
        if start < 0:
            if any(b != 0xFE for b in rx):
                self.bad_frames += 1
                rx.clear()
            return
        if start:
            if any(b != 0xFE for b in rx[:start]):
                self.bad_frames += 1
            del rx[:start]
        if len(rx) < 3:
            return
        length = (rx[1] | (rx[2] << 8)) & 0x3FFF
        if len(rx) < length + 2:
            return  # a length that never completes is dropped by the Tb timer
        found = scan(rx[: length + 2])
        del rx[: length + 2]
        self.requests += 1
        end = self.rx_wire_end
        frame = found.frame
        if self.rx_garbled or frame is None or frame.from_server:
            self.bad_frames += 1
            return
        server = frame.server
        if server.kind in (AddressType.GROUP, AddressType.BROADCAST):
            self.broadcasts += 1
            return
        if server.kind == AddressType.WILDCARD:
            if len(self.live) != 1 or len(self.known) != 1:
                return
            (address,) = self.live
        else:
            address = server.text
            if not self.answers(address):
                return
        reply = respond(frame, self.states[address], preamble=self.cfg.reply_preamble)
        if reply is not None:
            self.schedule(reply, address, end + self.cfg.td_s)

    def answers(self, slave: str) -> bool:
        """True when a request addressed to ``slave`` gets a reply: the slave is on the bus
        and alive. Otherwise the bus stays silent and the reason is counted
        (``unknown_address`` or ``dead_requests``), the same for every protocol."""
        if slave not in self.known:
            self.unknown_address += 1
            return False
        if slave not in self.live:
            self.dead_requests += 1
            return False
        return True

    # -- slave side -------------------------------------------------------------------
    def schedule(self, reply: bytes, slave: str, start: float) -> None:
        """Put ``reply`` on the wire from ``start`` unless another reply holds it."""
        if self.tx:
            self.collisions += 1
            return
        self.tx = reply
        self.tx_slave = slave
        self.tx_start = start
        self.tx_index = 0

    def next_tx_deadline(self) -> float | None:
        """Return when the next reply byte's stop bit ends, or None."""
        if not self.tx:
            return None
        return self.tx_start + (self.tx_index + 1) * self.tc

    def release_due(self, now: float) -> None:
        """Write every reply byte whose deadline has passed; record lateness."""
        tx, tc, start = self.tx, self.tc, self.tx_start
        first = self.tx_index
        last = first
        while last < len(tx) and start + (last + 1) * tc <= now:
            self.lateness.append(now - (start + (last + 1) * tc))
            last += 1
        if last == first:
            return
        try:
            os.write(self.fd, tx[first:last])
        except BlockingIOError:
            self.tx_dropped += last - first
        self.reply_bytes += last - first
        self.tx_index = last
        if last == len(tx):
            end = start + len(tx) * tc
            self.last_lateness.append(now - end)
            self.replies += 1
            self.replies_by_slave[self.tx_slave] = self.replies_by_slave.get(self.tx_slave, 0) + 1
            self.last_reply_end = end
            self.last_reply_end_at = end
            self.awaiting_first_after_reply = True
            self.tx = b""

    # -- the loop ---------------------------------------------------------------------
    def run(self, ctl_in: int, ctl_out: BinaryIO) -> None:
        """Serve until told to stop, the parent goes away, or ``max_run_s`` passes.

        Commands arrive as lines on ``ctl_in`` (``stats``, ``reset``, ``stop``); each gets one
        JSON line on ``ctl_out``. End of file on ``ctl_in`` (the parent died) stops the run.
        """
        fd, spin = self.fd, self.cfg.spin_s
        hard_end = time.perf_counter() + self.cfg.max_run_s
        pending = b""
        for _ in range(_MAX_LOOP_ITERATIONS):
            now = time.perf_counter()
            if now >= hard_end:
                return
            tx_due = self.next_tx_deadline()
            frame_due = self.frame_timer()
            wake = hard_end
            if tx_due is not None:
                wake = min(wake, tx_due - spin)
            if frame_due is not None:
                wake = min(wake, frame_due)
            timeout = min(max(0.0, wake - now), 0.5)
            readable, _, _ = select.select([fd, ctl_in], [], [], timeout)
            now = time.perf_counter()
            if fd in readable:
                with contextlib.suppress(BlockingIOError):
                    data = os.read(fd, 4096)
                    if data:
                        self.on_bytes(data, now)
            if ctl_in in readable:
                chunk = os.read(ctl_in, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if not self.command(line.decode().strip(), ctl_out):
                        return
            frame_due = self.frame_timer()
            if frame_due is not None and now >= frame_due:
                self.on_frame_timer()
            tx_due = self.next_tx_deadline()
            if tx_due is not None and tx_due - now <= spin:
                while time.perf_counter() < tx_due:  # bounded by spin_s
                    pass
                self.release_due(time.perf_counter())

    def command(self, cmd: str, out: BinaryIO) -> bool:
        """Serve one command from the parent; False means stop."""
        now = time.perf_counter()
        if cmd == "reset":
            self.reset(now)
            _send(out, {"ok": True})
        elif cmd in ("stats", "stop"):
            _send(out, {"stats": asdict(self.stats(now))})
        else:
            _send(out, {"error": f"unknown command {cmd!r}"})
        return cmd != "stop"


def _send(out: BinaryIO, message: dict[str, Any]) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def _stats_from_dict(data: dict[str, Any]) -> EmulatorStats:
    fields = dict(data)
    for name in ("lateness", "last_byte_lateness", "silence_after_reply"):
        fields[name] = Percentiles(**fields[name])
    return EmulatorStats(**fields)


def _set_timer_slack() -> None:
    """Ask Linux for 1 ns timer slack so ``select`` wakes within tens of µs."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)


def _raise_priority(realtime: bool) -> str:
    """Make the emulator win the CPU when a byte deadline comes; return what was granted.

    Measured here: at normal priority a woken emulator often waited 0.5–4 ms for the CPU
    while the master ran (CFS wake-up granularity), making ~1 % of reply bytes late by
    over a millisecond. ``SCHED_FIFO`` priority 1 (needs root or CAP_SYS_NICE) removed
    nearly all of it; ``nice -10`` did not. The process sleeps in ``select`` between bytes
    and busy-waits at most ``spin_s`` per byte, so a real-time class costs others little,
    and the kernel's RT throttling bounds it anyway.
    """
    if realtime:
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
            return "SCHED_FIFO 1"
        with contextlib.suppress(OSError):
            os.nice(-10)
            return "nice -10"
    return "normal"


def serve(cfg: EmulatorConfig) -> None:
    """Body of the emulator process: open the pty, report its path on stdout, serve."""
    _set_timer_slack()
    scheduling = _raise_priority(cfg.realtime)
    out = sys.stdout.buffer
    master, slave = os.openpty()
    try:
        tty.setraw(slave)
        os.set_blocking(master, False)
        _send(out, {"path": os.ttyname(slave), "pid": os.getpid(), "scheduling": scheduling})
        # Keep our slave fd open so the master never sees EIO while the gateway reopens.
        engine = _Engine(cfg, master)
        engine.scheduling = scheduling
        engine.run(sys.stdin.fileno(), out)
    finally:
        os.close(master)
        os.close(slave)


# --------------------------------------------------------------------------------------
# The parent-side API
# --------------------------------------------------------------------------------------

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BusEmulator:
    """An emulated RS-485 bus with ``slaves`` on a pty, served by its own process.

    ``protocol`` is ``"modbus"`` (slaves are unit ids 1..247), ``"dlt645"`` or ``"dlt698"``
    (slaves are 12-digit addresses). ``bits_per_char`` is 11 for 8E1 (10 for 8N1). ``td_s`` is the slave
    turnaround after the request's end (after t3.5 for Modbus). ``dead`` slaves exist but never
    answer. ``reply_preamble`` is the number of ``FE`` bytes in front of DL/T 645/698.45 replies.
    ``realtime`` asks for ``SCHED_FIFO`` priority 1 (falling back to ``nice -10``, then
    normal priority); the granted class is in :attr:`EmulatorStats.scheduling`.

    The process is ``python -m bench.emulator --serve <config>``, a plain subprocess: unlike
    ``multiprocessing`` spawn it does not re-import the caller's main module.
    """

    def __init__(
        self,
        protocol: Protocol,
        baud: int,
        *,
        slaves: Iterable[int | str],
        bits_per_char: int = BITS_8E1,
        td_s: float = 0.0,
        dead: Collection[int | str] = (),
        reply_preamble: int = 4,
        spin_s: float = DEFAULT_SPIN_S,
        max_run_s: float = DEFAULT_MAX_RUN_S,
        realtime: bool = True,
    ) -> None:
        """Validate the configuration; nothing starts until :meth:`start`."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        normalised = tuple(_norm_slave(protocol, s) for s in slaves)
        dead_set = frozenset(_norm_slave(protocol, s) for s in dead)
        unknown_dead = dead_set - set(normalised)
        if unknown_dead:
            raise ValueError(f"dead slaves {sorted(unknown_dead)} are not among the slaves")
        self.config = EmulatorConfig(
            protocol=protocol,
            baud=baud,
            bits_per_char=bits_per_char,
            slaves=normalised,
            dead=dead_set,
            td_s=td_s,
            reply_preamble=reply_preamble,
            spin_s=spin_s,
            max_run_s=max_run_s,
            realtime=realtime,
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self.path: str | None = None
        self.scheduling = "normal"

    def start(self, timeout: float = 15.0) -> str:
        """Start the emulator process; return the pty slave path to open (at parity N)."""
        if self._proc is not None:
            raise RuntimeError("emulator already started")
        cfg = asdict(self.config)
        cfg["slaves"] = list(self.config.slaves)
        cfg["dead"] = sorted(self.config.dead)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_REPO_ROOT, env.get("PYTHONPATH", "")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.emulator", "--serve", json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_REPO_ROOT,
            env=env,
        )
        try:
            message = self._receive(timeout)
        except Exception:
            self.kill()
            raise
        self.path = str(message["path"])
        self.scheduling = str(message.get("scheduling", "normal"))
        return self.path

    @property
    def pid(self) -> int | None:
        """The emulator process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def _receive(self, timeout: float) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdout is None:
            raise RuntimeError("emulator not started")
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"bus emulator did not answer within {timeout} s")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"bus emulator exited (status {proc.poll()})")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"bus emulator: {message['error']}")
        return message

    def _call(self, cmd: str, timeout: float) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise RuntimeError("emulator not started")
        proc.stdin.write(cmd.encode() + b"\n")
        proc.stdin.flush()
        return self._receive(timeout)

    def stats(self, timeout: float = 5.0) -> EmulatorStats:
        """Return the counters so far, without stopping."""
        return _stats_from_dict(self._call("stats", timeout)["stats"])

    def reset(self, timeout: float = 5.0) -> None:
        """Zero the counters (e.g. after a warm-up)."""
        self._call("reset", timeout)

    def stop(self, timeout: float = 5.0) -> EmulatorStats:
        """Stop the emulator process and return its final statistics."""
        try:
            return _stats_from_dict(self._call("stop", timeout)["stats"])
        finally:
            self.kill(timeout)

    def kill(self, timeout: float = 5.0) -> None:
        """End the process (after a stop, just reap it); safe to repeat."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)

    def __enter__(self) -> BusEmulator:
        """Start on entering a ``with`` block."""
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """End the process if it is still running."""
        self.kill()


def _parse_slaves(text: str) -> list[str]:
    out: list[str] = []
    for part in text.split(","):
        if "-" in part and len(part) < 12:
            lo, hi = part.split("-")
            out.extend(str(i) for i in range(int(lo), int(hi) + 1))
        elif part:
            out.append(part)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run an emulator on a pty until the duration ends; print its path and statistics."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    ap.add_argument("--serve", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--protocol", choices=list(PROTOCOLS), default="modbus")
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--bits", type=int, default=BITS_8E1, help="bits per character (11 = 8E1)")
    ap.add_argument("--slaves", default="1-10", help="e.g. 1-10 or 000000000001,000000000002")
    ap.add_argument("--dead", default="", help="comma-separated dead slaves")
    ap.add_argument("--td-ms", type=float, default=0.0)
    ap.add_argument("--duration", type=float, default=60.0)
    args = ap.parse_args(argv)
    if args.serve:
        raw = json.loads(args.serve)
        raw["slaves"] = tuple(raw["slaves"])
        raw["dead"] = frozenset(raw["dead"])
        serve(EmulatorConfig(**raw))
        return 0
    emu = BusEmulator(
        args.protocol,
        args.baud,
        slaves=_parse_slaves(args.slaves),
        bits_per_char=args.bits,
        td_s=args.td_ms / 1e3,
        dead=[d for d in args.dead.split(",") if d],
    )
    path = emu.start()
    print(path, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        time.sleep(args.duration)
    print(emu.stop().summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
