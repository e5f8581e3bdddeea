"""Modbus RTU serial timing: character time, inter-frame silence, the wire's read limit.

From Modbus over Serial Line v1.02 (see ``docs/protocols/serial-timing.md``): a character is
start + data bits + parity bit (if any) + stop bits; frames are separated by at least 3.5
character times of silence (t3.5), with fixed timers above 19200 baud (t1.5 = 750 µs,
t3.5 = 1.750 ms). The driver keeps t3.5 between frames; the benchmark compares achieved
reads per second with :func:`wire_limit_reads_per_s`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from drivers.transport.serial import char_bits
from drivers.transport.serial import char_time as line_char_time

Parity = Literal["N", "E", "O"]

FIXED_TIMER_BAUD = 19200
T35_FIXED_S = 0.00175
T15_FIXED_S = 0.00075


def char_time(baud: int, parity: Parity | str = "E", stopbits: float = 1, bytesize: int = 8) -> float:
    """Seconds one character takes on the wire (Tc): the line's own
    :func:`drivers.transport.serial.char_time` (:func:`char_bits` ÷ baud; 1.5 stop bits count
    as 1.5), except that a baud rate that is not positive is an error here, not clamped: a
    timing formula has no answer for it."""
    if baud <= 0:
        raise ValueError("baud rate must be positive")
    return line_char_time(baud, parity, stopbits, bytesize)


def t35(baud: int, parity: Parity | str = "E", stopbits: float = 1, bytesize: int = 8) -> float:
    """Inter-frame silence in seconds: 3.5 characters, 1.75 ms above 19200 baud."""
    if baud > FIXED_TIMER_BAUD:
        return T35_FIXED_S
    return 3.5 * char_time(baud, parity, stopbits, bytesize)


def t15(baud: int, parity: Parity | str = "E", stopbits: float = 1, bytesize: int = 8) -> float:
    """Longest gap allowed inside a frame: 1.5 characters, 750 µs above 19200 baud."""
    if baud > FIXED_TIMER_BAUD:
        return T15_FIXED_S
    return 1.5 * char_time(baud, parity, stopbits, bytesize)


def read_cycle_s(baud: int, parity: Parity | str, regs: int, td: float = 0.0, stopbits: float = 1) -> float:
    """Seconds one FC03/04 read of ``regs`` registers occupies the bus.

    Request 8 bytes + reply 5 + 2N bytes, a t3.5 after each frame, plus turnaround ``td``:
    ``T = (13 + 2N)·Tc + 2·t3.5 + Td``.
    """
    tc = char_time(baud, parity, stopbits)
    return (13 + 2 * regs) * tc + 2 * t35(baud, parity, stopbits) + td


def wire_limit_reads_per_s(baud: int, parity: Parity | str, regs: int, td: float = 0.0,
                           stopbits: float = 1) -> float:
    """The physical limit of reads per second on one bus (see :func:`read_cycle_s`)."""
    return 1.0 / read_cycle_s(baud, parity, regs, td, stopbits)


def plan_cycle_s(baud: int, parity: Parity | str, stopbits: float, bytesize: int, registers: Sequence[int],
                 silence_s: float | None = None, pause_s: float = 0.0) -> float:
    """Seconds one execution of a read plan occupies an RTU line at the least: FC03/04 reads of
    ``registers`` registers each (:func:`read_cycle_s` with no turnaround), ``silence_s``
    instead of t3.5 when the bus sets one, and the plan's pause between its requests."""
    tc = char_time(baud, parity, stopbits, bytesize)
    gap = t35(baud, parity, stopbits, bytesize) if silence_s is None else silence_s
    return sum((13 + 2 * n) * tc + 2 * gap for n in registers) + pause_s * max(0, len(registers) - 1)


__all__ = ["FIXED_TIMER_BAUD", "T15_FIXED_S", "T35_FIXED_S", "Parity", "char_bits", "char_time", "plan_cycle_s",
           "read_cycle_s", "t15", "t35", "wire_limit_reads_per_s"]
