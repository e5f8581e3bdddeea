"""RTU/TCP framing: CRC vectors, reply scanning and resynchronisation cases, precise waits."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.framer.rtu import FramerRTU

from drivers.modbus.frames import crc16, find_any_read_reply, mbap_frame, mbap_header, rtu_frame, scan_rtu_reply
from drivers.transport.precise import PreciseTimer

# Modbus over Serial Line v1.02 / common documentation example: read 10 holding registers.
REQUEST = bytes.fromhex("01030000000AC5CD")
# A reply of unit 1 to FC03 count 2: f32 230.5
REPLY = rtu_frame(1, bytes.fromhex("030443668000"))


def test_crc_known_vector() -> None:
    assert rtu_frame(1, bytes.fromhex("030000000A")) == REQUEST
    assert crc16(REQUEST) == 0          # a frame including its CRC checks to zero


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256))
def test_crc_agrees_with_pymodbus(data: bytes) -> None:
    ours = crc16(data)
    # pymodbus returns the CRC with its bytes swapped, ready to append big-endian
    assert ((ours & 0xFF) << 8 | ours >> 8) == FramerRTU.compute_CRC(data)


def test_scan_complete_partial_and_exception() -> None:
    status, reply = scan_rtu_reply(REPLY, 1, 3, 2)
    assert status == "frame" and reply is not None
    assert reply.payload == bytes.fromhex("43668000") and reply.start == 0 and reply.end == 9
    assert scan_rtu_reply(REPLY[:6], 1, 3, 2) == ("partial", None)
    exc = rtu_frame(1, bytes((0x83, 2)))
    status, reply = scan_rtu_reply(exc, 1, 3, 2)
    assert status == "frame" and reply is not None and reply.is_exception and reply.payload == b"\x02"


def test_scan_skips_leading_garbage_and_reports_bad_crc_as_garbage() -> None:
    status, reply = scan_rtu_reply(b"\xff\x00\x13" + REPLY, 1, 3, 2)
    assert status == "frame" and reply is not None and reply.start == 3
    bad = REPLY[:-1] + bytes(((REPLY[-1] + 1) & 0xFF,))
    assert scan_rtu_reply(bad, 1, 3, 2)[0] == "garbage"
    assert scan_rtu_reply(b"\xaa\x55\xaa\x55\xaa\x55\xaa\x55\xaa\x55", 1, 3, 2)[0] == "garbage"


def test_any_read_reply_finds_a_reply_to_another_request_behind_noise() -> None:
    late = rtu_frame(1, bytes.fromhex("03080000000100020003"))     # 4 registers, not 2
    assert scan_rtu_reply(b"\x13" + late, 1, 3, 2)[0] == "garbage"
    assert find_any_read_reply(b"\x13" + late) == (1, 1 + len(late), 1, 3)
    assert find_any_read_reply(b"\x13" + rtu_frame(7, bytes((0x84, 2)))) == (1, 6, 7, 0x84)
    assert find_any_read_reply(late[:-1] + bytes(((late[-1] + 1) & 0xFF,))) is None   # bad CRC
    assert find_any_read_reply(b"\xaa\x55" * 8) is None


def test_scan_returns_a_foreign_unit_frame_for_wrong_address() -> None:
    other = rtu_frame(2, bytes.fromhex("030443668000"))
    status, reply = scan_rtu_reply(other, 1, 3, 2)
    assert status == "frame" and reply is not None and reply.unit == 2


def test_mbap_round_trip() -> None:
    adu = mbap_frame(0x1234, 7, bytes.fromhex("0300000002"))
    assert adu.hex() == "123400000006070300000002"
    assert mbap_header(adu) == (0x1234, 0, 6, 7)


async def test_precise_timer_never_returns_early() -> None:
    timer = PreciseTimer()
    try:
        for delay in (0.0, 0.0003, 0.00175, -1.0):
            deadline = time.monotonic() + delay
            await timer.wait_until(deadline)
            assert time.monotonic() >= deadline
    finally:
        timer.close()
        timer.close()
