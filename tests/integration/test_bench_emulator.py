"""The bus emulator (bench/emulator.py) is itself correct: protocol answers, silence, counters.

These run the emulator process on a pty and talk to it with plain pyserial at parity N, the
way a gateway would. Timing assertions are lower bounds (the wire cannot be faster than its
character times) or use silences far from the thresholds, so a busy machine does not make
them flaky.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import serial

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not an installed package
    sys.path.insert(0, str(ROOT))

from bench.emulator import (  # noqa: E402
    BusEmulator,
    EmulatorStats,
    crc16_modbus,
    dlt645_frame,
    dlt645_read_reply,
    dlt645_read_request,
    dlt645_value,
    dlt698_energy,
    modbus_read_reply,
    modbus_read_request,
    modbus_register_value,
    with_crc,
)
from bench.wire import (  # noqa: E402
    char_time,
    dlt645_reads_per_s,
    dlt698_list_request_bytes,
    dlt698_list_response_bytes,
    modbus_read_cycle,
    modbus_reads_per_s,
    t35,
)

MODBUS_BAUD = 19200
DLT_BAUD = 9600
METER_A = "123456789012"
METER_B = "000000000002"
METER_DEAD = "000000000003"

Bus = tuple[BusEmulator, serial.Serial]


def _bus(protocol: Literal["modbus", "dlt645", "dlt698"], baud: int, slaves: list[int] | list[str],
         dead: set[int] | set[str], *, td_s: float = 0.0, timeout: float) -> Iterator[Bus]:
    """An emulator process on a pty and a plain pyserial port on it at parity N (the body of
    the module-scoped bus fixtures); both are closed when the module is done."""
    emu = BusEmulator(protocol, baud, slaves=slaves, dead=dead, td_s=td_s)
    path = emu.start()
    port = serial.Serial(path, baud, parity="N", timeout=timeout)
    try:
        yield emu, port
    finally:
        port.close()
        emu.kill()


def _silent(bus: Bus, frame: bytes, counter: str, *, window: int = 64) -> EmulatorStats:
    """Send ``frame``; the bus must stay silent (nothing within the read timeout), no reply
    counted, and ``counter`` (why it stayed silent) counted once. The stats, for more checks."""
    emu, port = bus
    port.write(frame)
    assert port.read(window) == b""
    stats = emu.stats()
    assert stats.replies == 0
    assert getattr(stats, counter) == 1
    return stats


def _fresh(bus: Bus) -> Bus:
    """The shared bus for one test: nothing left in the input buffer, counters at zero."""
    emu, port = bus
    port.reset_input_buffer()
    emu.reset()
    return emu, port


# ---------------------------------------------------------------------------------------
# wire formulas against docs/protocols/serial-timing.md
# ---------------------------------------------------------------------------------------


def test_wire_limits_match_the_reference_table() -> None:
    assert modbus_read_cycle(9600, 20) == pytest.approx(0.06875, abs=1e-5)
    assert modbus_reads_per_s(9600, 20) == pytest.approx(14.5, abs=0.05)
    assert modbus_reads_per_s(9600, 2, td_s=0.010) == pytest.approx(26.7, abs=0.05)
    assert modbus_reads_per_s(38400, 2) == pytest.approx(119.5, abs=0.05)
    assert modbus_reads_per_s(38400, 20, td_s=0.010) == pytest.approx(34.9, abs=0.05)
    assert modbus_reads_per_s(115200, 120) == pytest.approx(36.2, abs=0.05)
    assert t35(38400) == 0.00175
    assert dlt645_reads_per_s(2400, 4) == pytest.approx(4.5, abs=0.05)
    assert dlt645_reads_per_s(2400, 20) == pytest.approx(3.4, abs=0.05)
    assert dlt645_reads_per_s(9600, 4) == pytest.approx(14.2, abs=0.05)
    assert dlt645_reads_per_s(9600, 20) == pytest.approx(11.3, abs=0.05)


def test_wire_formulas_agree_with_the_runtime_timing_module() -> None:
    timing = pytest.importorskip("drivers.modbus.timing")
    for baud in (1200, 2400, 9600, 19200, 38400, 115200):
        assert t35(baud) == pytest.approx(timing.t35(baud, "E"))
        for regs in (1, 2, 20, 125):
            for td in (0.0, 0.01):
                assert modbus_read_cycle(baud, regs, td) == pytest.approx(timing.read_cycle_s(baud, "E", regs, td))


def test_codec_helpers_agree_with_known_vectors() -> None:
    # The classic example: 01 03 00 00 00 0A → CRC C5 CD.
    assert with_crc(bytes.fromhex("01030000000a")).hex() == "01030000000ac5cd"
    # drivers/dlt645/vectors.txt V2 (libDLT645 test frames), V12, V6 and D02.
    v2_req = "68 12 90 78 56 34 12 68 11 04 33 33 34 33 68 16"
    v2_rsp = "68 12 90 78 56 34 12 68 91 08 33 33 34 33 AB 89 67 45 CC 16"
    v12_rsp = "68 12 90 78 56 34 12 68 D1 01 35 8D 16"
    v6_req = "FE FE FE FE 68 08 02 02 41 22 00 68 11 04 35 37 33 37 2A 16"
    d02_req = "FE FE FE FE 68 12 90 78 56 34 12 68 11 04 33 32 34 33 67 16"
    assert dlt645_read_request(METER_A, 0x00010000, preamble=0) == bytes.fromhex(v2_req)
    value = bytes.fromhex("78563412")
    assert dlt645_frame(METER_A, 0x91, bytes.fromhex("00000100") + value) == bytes.fromhex(v2_rsp)
    assert dlt645_frame(METER_A, 0xD1, b"\x02") == bytes.fromhex(v12_rsp)
    assert dlt645_read_request("002241020208", 0x04000402) == bytes.fromhex(v6_req)
    assert dlt645_read_request(METER_A, 0x0001FF00) == bytes.fromhex(d02_req)


# ---------------------------------------------------------------------------------------
# Modbus RTU
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def modbus_bus() -> Iterator[Bus]:
    yield from _bus("modbus", MODBUS_BAUD, [1, 2, 3], {3}, timeout=0.3)


@pytest.fixture
def mb(modbus_bus: Bus) -> Bus:
    time.sleep(0.01)  # the protocol's inter-frame silence: more than t3.5 after the previous test
    return _fresh(modbus_bus)


def _quiet(seconds: float = 0.01) -> None:
    """Keep the line silent for ``seconds`` (the scenario: an RTU inter-frame gap, > t3.5)."""
    time.sleep(seconds)


def test_modbus_fc3_reply_is_correct_and_takes_the_wire_time(mb: Bus) -> None:
    emu, port = mb
    t0 = time.perf_counter()
    port.write(modbus_read_request(1, 3, 100, 20))
    reply = port.read(45)
    elapsed = time.perf_counter() - t0
    assert reply == modbus_read_reply(1, 3, 100, 20)
    assert crc16_modbus(reply[:-2]) == reply[-2] | reply[-1] << 8
    first = (reply[3] << 8) | reply[4]
    assert first == modbus_register_value(1, 3, 100)
    # Request 8 B + t3.5 + reply 45 B, minus the t3.5 after the reply the master may skip.
    floor = modbus_read_cycle(MODBUS_BAUD, 20) - t35(MODBUS_BAUD)
    assert elapsed >= floor - 0.0002
    stats = emu.stats()
    assert (stats.requests, stats.replies, stats.replies_by_slave) == (1, 1, {"1": 1})
    assert stats.lateness.max < 0.02  # sanity; trustworthiness is judged by the benchmarks


def test_modbus_fc4_and_exceptions(mb: Bus) -> None:
    emu, port = mb
    port.write(modbus_read_request(2, 4, 0, 2))
    reply = port.read(9)
    assert reply == modbus_read_reply(2, 4, 0, 2)
    assert (reply[3] << 8 | reply[4]) == modbus_register_value(2, 4, 0)
    _quiet()
    port.write(modbus_read_request(2, 3, 0, 126))  # too many registers → exception 03
    assert port.read(5) == with_crc(bytes((2, 0x83, 0x03)))
    _quiet()
    port.write(with_crc(bytes((2, 0x2B, 0x0E, 0x01, 0x00))))  # unsupported → exception 01
    assert port.read(5) == with_crc(bytes((2, 0xAB, 0x01)))
    assert emu.stats().exception_replies == 2


@pytest.mark.parametrize(
    ("frame", "counter"),
    [
        (modbus_read_request(9, 3, 0, 2), "unknown_address"),
        (modbus_read_request(3, 3, 0, 2), "dead_requests"),
        (modbus_read_request(1, 3, 0, 2)[:-1] + b"\x00", "bad_frames"),
        (modbus_read_request(0, 3, 0, 2), "broadcasts"),
    ],
    ids=["unknown-address", "dead-slave", "bad-crc", "broadcast"],
)
def test_modbus_silence(mb: Bus, frame: bytes, counter: str) -> None:
    assert _silent(mb, frame, counter).requests == 1


#: At 1200 bd t3.5 is 32 ms, so "immediately" stays under it even when a loaded run delays
#: the test process by tens of ms (at 19200 bd t3.5 is 2 ms: a CI run on a busy machine
#: wrote 2+ ms late and counted no violation).
SLOW_MODBUS_BAUD = 1200


@pytest.fixture
def slow_modbus_bus() -> Iterator[Bus]:
    yield from _bus("modbus", SLOW_MODBUS_BAUD, [1, 2], set(), timeout=2.0)


def test_modbus_t35_violation_is_counted_only_when_the_master_is_too_quick(
    slow_modbus_bus: Bus,
) -> None:
    emu, port = slow_modbus_bus
    request = modbus_read_request(1, 3, 0, 2)
    port.write(request)
    assert len(port.read(9)) == 9
    port.write(request)  # immediately: well under t3.5 after the reply's last byte
    assert len(port.read(9)) == 9
    _quiet(0.15)  # ~5 × t3.5
    port.write(request)
    assert len(port.read(9)) == 9
    stats = emu.stats()
    assert stats.replies == 3
    assert stats.t35_violations == 1
    assert stats.silence_after_reply.count == 2
    assert stats.silence_after_reply.max >= 0.15
    assert stats.silence_after_reply.min < t35(SLOW_MODBUS_BAUD)


def test_modbus_collision_when_master_talks_over_a_reply(slow_modbus_bus: Bus) -> None:
    # at 1200 bd the 125-byte reply takes 1.15 s, so the request written after its first
    # bytes lands on it even when a loaded run stalls this process (at 19200 bd: 72 ms)
    emu, port = slow_modbus_bus
    port.write(modbus_read_request(1, 3, 0, 60))
    first = port.read(5)  # the reply is on the wire now
    assert len(first) == 5
    port.write(modbus_read_request(2, 3, 0, 2))
    rest = port.read(120)
    assert first + rest == modbus_read_reply(1, 3, 0, 60)  # the reply finishes, slave 2 is silent
    stats = emu.stats()
    assert stats.collisions == 8
    assert stats.replies == 1


def test_modbus_gap_inside_a_request_discards_it() -> None:
    # At 300 bd Tc = 36.7 ms, t1.5 = 55.0 ms, t3.5 = 128.3 ms. The first byte ends on the
    # wire 36.7 ms after it is written, so writing the rest 107 ms later leaves a ~70 ms gap:
    # inside the frame for any delay of this process up to 58 ms (at 1200 bd the margin was
    # 9 ms, and a loaded run's test process overslept it: two frames, no gap).
    baud = 300
    with BusEmulator("modbus", baud, slaves=[1]) as emu:
        assert emu.path is not None
        with serial.Serial(emu.path, baud, parity="N", timeout=0.8) as port:   # 8 bytes take 0.29 s on this wire
            request = modbus_read_request(1, 3, 0, 1)
            port.write(request[:1])
            time.sleep(0.107)                 # the scenario: a gap inside the frame
            port.write(request[1:])
            assert port.read(7) == b""
            stats = emu.stop()
    assert stats.intra_frame_gaps == 1
    assert stats.replies == 0


# ---------------------------------------------------------------------------------------
# DL/T 645-2007
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlt_bus() -> Iterator[Bus]:
    yield from _bus("dlt645", DLT_BAUD, [METER_A, METER_B, METER_DEAD], {METER_DEAD}, td_s=0.020, timeout=0.4)


@pytest.fixture
def dlt(dlt_bus: Bus) -> Bus:
    return _fresh(dlt_bus)


def _decode_dlt645(frame: bytes) -> tuple[str, int, bytes]:
    body = frame.lstrip(b"\xfe")
    assert body[0] == 0x68 and body[7] == 0x68 and body[-1] == 0x16
    assert sum(body[:-2]) & 0xFF == body[-2]
    assert body[9] == len(body) - 12
    address = body[1:7][::-1].hex()
    data = bytes((b - 0x33) & 0xFF for b in body[10:-2])
    return address, body[8], data


def test_dlt645_single_read(dlt: Bus) -> None:
    emu, port = dlt
    t0 = time.perf_counter()
    port.write(dlt645_read_request(METER_A, 0x00010000))
    reply = port.read(24)
    elapsed = time.perf_counter() - t0
    assert reply[:4] == b"\xfe" * 4
    address, control, data = _decode_dlt645(reply)
    assert (address, control) == (METER_A, 0x91)
    assert data[:4] == (0x00010000).to_bytes(4, "little")
    assert data[4:] == dlt645_value(METER_A, 0x00010000)
    assert reply == dlt645_read_reply(METER_A, 0x00010000)
    assert elapsed >= (20 + 24) * char_time(DLT_BAUD) + 0.020 - 0.0002
    assert emu.stats().replies_by_slave == {METER_A: 1}


def test_dlt645_block_read_returns_five_values(dlt: Bus) -> None:
    _, port = dlt
    port.write(dlt645_read_request(METER_B, 0x0001FF00))
    reply = port.read(40)
    address, control, data = _decode_dlt645(reply)
    assert (address, control) == (METER_B, 0x91)
    values = data[4:]
    assert len(values) == 20
    for tariff in range(5):
        assert values[4 * tariff : 4 * tariff + 4] == dlt645_value(METER_B, 0x00010000 | tariff << 8)


def test_dlt645_unknown_di_gets_abnormal_reply(dlt: Bus) -> None:
    emu, port = dlt
    port.write(dlt645_read_request(METER_A, 0x0999FF00))
    _, control, data = _decode_dlt645(port.read(17))
    assert (control, data) == (0xD1, b"\x02")
    assert emu.stats().exception_replies == 1


@pytest.mark.parametrize(
    ("frame", "counter"),
    [
        (dlt645_read_request("000000000099", 0x00010000), "unknown_address"),
        (dlt645_read_request(METER_DEAD, 0x00010000), "dead_requests"),
        (dlt645_read_request(METER_A, 0x00010000)[:-2] + b"\x00\x16", "bad_frames"),
        (dlt645_frame("999999999999", 0x08, bytes(6), preamble=4), "broadcasts"),
    ],
    ids=["unknown-address", "dead-meter", "bad-checksum", "broadcast"],
)
def test_dlt645_silence(dlt: Bus, frame: bytes, counter: str) -> None:
    _silent(dlt, frame, counter)


def test_dlt645_garbage_before_frame_is_skipped(dlt: Bus) -> None:
    _, port = dlt
    port.write(b"\x00\x68\x01" + dlt645_read_request(METER_A, 0x02800002))
    _, control, data = _decode_dlt645(port.read(22))
    assert control == 0x91
    assert data[4:] == bytes((0x00, 0x50))  # 50.00 Hz, LSB first


# ---------------------------------------------------------------------------------------
# DL/T 698.45 (answered by the gateway's own pure meter-side codec)
# ---------------------------------------------------------------------------------------

ENERGY_LIST = tuple(0x00100201 + k for k in range(5))       # total + tariffs 1-4


def _dlt698_request(address: str, oads: tuple[int, ...], piid: int = 1) -> bytes:
    from drivers.dlt698.apdu import GetNormalList, encode_request
    from drivers.dlt698.frame import C_REQUEST, ServerAddress, encode_frame

    return encode_frame(C_REQUEST, ServerAddress.single(address), 0, encode_request(GetNormalList(piid, oads)),
                        preamble=4)


@pytest.fixture(scope="module")
def dlt698_bus() -> Iterator[Bus]:
    yield from _bus("dlt698", DLT_BAUD, [METER_A, METER_B, METER_DEAD], {METER_DEAD}, td_s=0.020, timeout=0.4)


@pytest.fixture
def d698(dlt698_bus: Bus) -> Bus:
    return _fresh(dlt698_bus)


def test_dlt698_list_read_has_the_wire_formulas_lengths_and_the_emulators_values(
    d698: Bus,
) -> None:
    from drivers.dlt698.apdu import GetResponseNormalList, parse_response
    from drivers.dlt698.frame import scan

    emu, port = d698
    request = _dlt698_request(METER_B, ENERGY_LIST)
    assert len(request) == dlt698_list_request_bytes(5)
    t0 = time.perf_counter()
    port.write(request)
    reply = port.read(dlt698_list_response_bytes(5))
    elapsed = time.perf_counter() - t0
    assert len(reply) == dlt698_list_response_bytes(5) and reply[:4] == b"\xfe" * 4
    frame = scan(reply).frame
    assert frame is not None and frame.server.text == METER_B
    resp = parse_response(frame.apdu)
    assert isinstance(resp, GetResponseNormalList)
    assert [(oad, d.value) for oad, d in resp.results] == [  # type: ignore[union-attr]
        (oad, dlt698_energy(METER_B, k + 1)) for k, oad in enumerate(ENERGY_LIST)]
    assert elapsed >= (len(request) + len(reply)) * char_time(DLT_BAUD) + 0.020 - 0.0002
    assert emu.stats().replies_by_slave == {METER_B: 1}


@pytest.mark.parametrize(
    ("address", "counter"),
    [("000000000099", "unknown_address"), (METER_DEAD, "dead_requests")],
    ids=["unknown-address", "dead-meter"],
)
def test_dlt698_silence(d698: Bus, address: str, counter: str) -> None:
    _silent(d698, _dlt698_request(address, ENERGY_LIST), counter, window=80)


def test_dlt698_bad_fcs_is_a_bad_frame(d698: Bus) -> None:
    request = bytearray(_dlt698_request(METER_A, ENERGY_LIST))
    request[-2] ^= 0xFF
    _silent(d698, bytes(request), "bad_frames", window=80)


def test_stats_survive_the_process_boundary() -> None:
    emu = BusEmulator("modbus", 38400, slaves=[5])
    emu.start()
    try:
        stats = emu.stop()
    finally:
        emu.kill()
    assert isinstance(stats, EmulatorStats)
    assert stats.requests == 0
    assert stats.trustworthy()
    assert "trustworthy" in stats.summary()
