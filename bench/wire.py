"""The wire's physical limit: character times, silences and read cycles on an RS-485 bus.

Formulas from ``docs/protocols/serial-timing.md`` (Modbus over Serial Line v1.02 and
DL/T 645-2007 §5.3), kept self-contained so the benchmarks do not depend on runtime code::

    Tc     = bits_per_char / baud                 (8E1: 11 bits, 8N1: 10)
    t3.5   = 3.5·Tc if baud ≤ 19200, else 1.750 ms     (t1.5: 1.5·Tc, else 0.750 ms)
    Modbus FC03/04, N registers: request 8 B, response 5 + 2N B
      T_cycle = (13 + 2N)·Tc + 2·t3.5 + Td
    DL/T 645 read (C=11): request p_req + 12 + 4 B, response p_rep + 16 + value bytes
      T_cycle = (request + response)·Tc + Td,   20 ms ≤ Td ≤ 500 ms
    DL/T 698.45 GET-Request-NormalList of n OADs (6-byte server address):
      request p + 17 + (5 + 4n) B, response p + 17 + (6 + n·(4 + 1 + v)) B (v: type + value)
      T_cycle = (request + response)·Tc + Td   (frames carry their length: no silence rule)

A benchmark divides its achieved reads/s by :func:`modbus_reads_per_s`,
:func:`dlt645_reads_per_s` or :func:`dlt698_reads_per_s`. The reference table's DL/T 645 figures (4.5 and 3.4 reads/s at
2400 baud) assume 4 ``FE`` bytes in front of both the request and the reply.
"""

from __future__ import annotations

#: Above this baud rate Modbus uses fixed inter-character and inter-frame timers.
FIXED_TIMER_BAUD = 19200
#: Fixed t3.5 above 19200 baud, in seconds.
T35_FIXED_S = 0.001750
#: Fixed t1.5 above 19200 baud, in seconds.
T15_FIXED_S = 0.000750
#: Bits per character for 8E1 (start + 8 data + parity + stop): Modbus RTU and DL/T 645.
BITS_8E1 = 11
#: Modbus RTU read request (FC03/FC04) length in bytes.
MODBUS_READ_REQUEST_BYTES = 8
#: DL/T 645 frame overhead without preamble: 68, 6 address, 68, C, L, CS, 16.
DLT645_FRAME_OVERHEAD = 12
#: DL/T 645 data identifier length (2007 edition).
DLT645_DI_BYTES = 4
#: DL/T 698.45 frame overhead without preamble, server address and APDU: 68, L (2), C, AF,
#: CA, HCS (2), FCS (2), 16.
DLT698_FRAME_OVERHEAD = 11
#: A 12-digit DL/T 698.45 server address on the wire.
DLT698_ADDRESS_BYTES = 6
#: GET-Request-NormalList APDU without its OADs: 05 02, PIID, count, time tag (00).
DLT698_LIST_REQUEST_FIXED = 5
#: GET-Response-NormalList APDU without its results: 85 02, PIID, count, follow report (00),
#: time tag (00).
DLT698_LIST_RESPONSE_FIXED = 6
#: One result's fixed part: OAD (4) and the Data/DAR choice (1).
DLT698_RESULT_FIXED = 5


def char_time(baud: int, bits_per_char: int = BITS_8E1) -> float:
    """Return one character's time on the wire in seconds (``Tc``)."""
    if baud <= 0:
        raise ValueError(f"baud must be positive, got {baud}")
    return bits_per_char / baud


def t35(baud: int, bits_per_char: int = BITS_8E1) -> float:
    """Return the Modbus RTU inter-frame silence t3.5 in seconds."""
    if baud > FIXED_TIMER_BAUD:
        return T35_FIXED_S
    return 3.5 * char_time(baud, bits_per_char)


def t15(baud: int, bits_per_char: int = BITS_8E1) -> float:
    """Return the Modbus RTU maximum inter-character gap t1.5 in seconds."""
    if baud > FIXED_TIMER_BAUD:
        return T15_FIXED_S
    return 1.5 * char_time(baud, bits_per_char)


def modbus_read_response_bytes(registers: int) -> int:
    """Return the length of an FC03/FC04 response carrying ``registers`` registers."""
    return 5 + 2 * registers


def modbus_read_cycle(baud: int, registers: int, td_s: float = 0.0, bits_per_char: int = BITS_8E1) -> float:
    """Return the shortest time, in seconds, of one FC03/FC04 read of ``registers`` registers.

    Request and response on the wire, the t3.5 silence after each, and the turnaround Td.
    """
    if not 1 <= registers <= 125:
        raise ValueError(f"an FC03/FC04 read carries 1..125 registers, got {registers}")
    chars = MODBUS_READ_REQUEST_BYTES + modbus_read_response_bytes(registers)
    return chars * char_time(baud, bits_per_char) + 2 * t35(baud, bits_per_char) + td_s


def modbus_reads_per_s(baud: int, registers: int, td_s: float = 0.0, bits_per_char: int = BITS_8E1) -> float:
    """Return the wire limit in reads per second for one bus (see :func:`modbus_read_cycle`)."""
    return 1.0 / modbus_read_cycle(baud, registers, td_s, bits_per_char)


def dlt645_request_bytes(preamble: int = 4, data_len: int = DLT645_DI_BYTES) -> int:
    """Return a DL/T 645 request's length: ``preamble`` × FE + 12 + ``data_len``."""
    return preamble + DLT645_FRAME_OVERHEAD + data_len


def dlt645_response_bytes(value_bytes: int, preamble: int = 4) -> int:
    """Return a normal C=91 reply's length: ``preamble`` × FE + 12 + DI (4) + value bytes."""
    return preamble + DLT645_FRAME_OVERHEAD + DLT645_DI_BYTES + value_bytes


def dlt645_read_cycle(
    baud: int,
    value_bytes: int,
    td_s: float = 0.020,
    bits_per_char: int = BITS_8E1,
    request_preamble: int = 4,
    reply_preamble: int = 4,
) -> float:
    """Return the shortest time, in seconds, of one DL/T 645 C=11 read.

    ``value_bytes`` is the reply's value payload after the echoed DI: 4 for one energy value,
    20 for the ``0001FF00`` block (total + 4 tariffs). There is no t3.5 rule: frames are
    delimited by ``68 … 16`` and L.
    """
    chars = dlt645_request_bytes(request_preamble) + dlt645_response_bytes(value_bytes, reply_preamble)
    return chars * char_time(baud, bits_per_char) + td_s


def dlt645_reads_per_s(
    baud: int,
    value_bytes: int,
    td_s: float = 0.020,
    bits_per_char: int = BITS_8E1,
    request_preamble: int = 4,
    reply_preamble: int = 4,
) -> float:
    """Return the wire limit in reads per second for one bus (see :func:`dlt645_read_cycle`)."""
    return 1.0 / dlt645_read_cycle(baud, value_bytes, td_s, bits_per_char, request_preamble, reply_preamble)


def dlt698_list_request_bytes(oads: int, preamble: int = 4, address_bytes: int = DLT698_ADDRESS_BYTES) -> int:
    """Return a GET-Request-NormalList frame's length for ``oads`` OADs, ``preamble`` × FE included."""
    return preamble + DLT698_FRAME_OVERHEAD + address_bytes + DLT698_LIST_REQUEST_FIXED + 4 * oads


def dlt698_list_response_bytes(
    oads: int, data_bytes: int = 5, preamble: int = 4, address_bytes: int = DLT698_ADDRESS_BYTES
) -> int:
    """Return a GET-Response-NormalList frame's length: ``oads`` results of ``data_bytes`` each.

    ``data_bytes`` is one value's A-XDR Data, type byte included: 5 for a
    double-long-unsigned energy register.
    """
    results = oads * (DLT698_RESULT_FIXED + data_bytes)
    return preamble + DLT698_FRAME_OVERHEAD + address_bytes + DLT698_LIST_RESPONSE_FIXED + results


def dlt698_read_cycle(
    baud: int,
    oads: int,
    data_bytes: int = 5,
    td_s: float = 0.020,
    bits_per_char: int = BITS_8E1,
    request_preamble: int = 4,
    reply_preamble: int = 4,
) -> float:
    """Return the shortest time, in seconds, of one DL/T 698.45 NormalList read of ``oads`` OADs.

    Request and reply on the wire and the meter's turnaround Td (DL/T 698.45 states none; the
    benchmark uses DL/T 645's 20 ms floor). Frames carry their length, so no silence is owed.
    """
    chars = dlt698_list_request_bytes(oads, request_preamble) + dlt698_list_response_bytes(
        oads, data_bytes, reply_preamble
    )
    return chars * char_time(baud, bits_per_char) + td_s


def dlt698_reads_per_s(
    baud: int,
    oads: int,
    data_bytes: int = 5,
    td_s: float = 0.020,
    bits_per_char: int = BITS_8E1,
    request_preamble: int = 4,
    reply_preamble: int = 4,
) -> float:
    """Return the wire limit in reads per second for one bus (see :func:`dlt698_read_cycle`)."""
    return 1.0 / dlt698_read_cycle(baud, oads, data_bytes, td_s, bits_per_char, request_preamble, reply_preamble)
