"""Table-driven reflected CRC-16, the one algorithm behind Modbus RTU's CRC and DL/T
698.45's HCS/FCS (CRC-16/X-25).

Both protocols use a reflected CRC-16 with init FFFF, byte-wise through a 256-entry table;
only the polynomial and the final XOR differ (Modbus: 0xA001, no XOR; X-25: 0x8408, XOR
FFFF). The table is built here once per polynomial so the two codecs cannot drift apart.
"""

from __future__ import annotations


def reflected_table(poly: int) -> tuple[int, ...]:
    """The 256-entry table of a reflected CRC-16 with the (reflected) polynomial ``poly``."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


def reflected_crc16(data: bytes | bytearray | memoryview, table: tuple[int, ...], init: int = 0xFFFF) -> int:
    """Run ``data`` through a table of :func:`reflected_table` from ``init`` (no final XOR)."""
    crc = init
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc
