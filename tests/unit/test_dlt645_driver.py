"""The DL/T 645 driver against a scripted line: echoes, garbage, late and foreign replies.

A real meter cannot be made to send a corrupted checksum or a reply from another address
on demand, so these cases run against :class:`FakeLine`, a transport whose "meter" is a
function of the request frame. The simulator and the independent ``dlt645`` server cover
the normal cases in ``tests/integration``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import pytest

from drivers.dlt645.codec import Frame, address_to_wire, decode, encode_frame
from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.plan import compile_plan
from drivers.dlt645.points import DiPoint
from drivers.dlt645.values import encode_value
from drivers.transport.pipe import ExchangePipe, Feed, LineTiming, Lost
from gateway.errors import ConfigError, ReadTimeout, WrongAddressError
from gateway.settings import BusSettings

ADDR = "123456789012"
WIRE = address_to_wire(ADDR)
Meter = Callable[[Frame], bytes | None]


class FakeLine:
    """A channel under the real pipe whose "meter" is ``meter(request)``; replies are fed on a
    later loop turn (after ``delay`` s). A fake by necessity: no real meter sends corrupted or
    foreign frames on demand."""

    def __init__(self, meter: Meter, *, echo: bool = False, delay: float = 0.0) -> None:
        self.meter = meter
        self.echo = echo
        self.delay = delay
        self.sent: list[Frame] = []
        self.opened = 0
        self.overlaps = 0
        self._outstanding = 0
        self._feed: Feed | None = None

    @property
    def describe(self) -> str:
        return "fake line"

    async def open(self, feed: Feed, lost: Lost) -> None:
        self.opened += 1
        self._feed = feed

    def close(self) -> None:
        pass

    def _deliver(self, data: bytes) -> None:
        self._outstanding -= 1
        assert self._feed is not None
        self._feed(data, time.monotonic())

    def write(self, data: bytes) -> None:
        _, frame = decode(data)
        assert frame is not None
        self.sent.append(frame)
        if self._outstanding:
            self.overlaps += 1
        if self.echo:
            assert self._feed is not None
            self._feed(data, time.monotonic())
        reply = self.meter(frame)
        if reply:
            self._outstanding += 1
            asyncio.get_running_loop().call_later(self.delay, self._deliver, reply)

    def dis(self) -> list[int]:
        return [int.from_bytes(f.data[:4], "little") for f in self.sent]


def bus(**kw: object) -> BusSettings:
    base: dict[str, object] = {"id": "b1", "type": "tcp", "protocol": "dlt645", "host": "x", "tcp_port": 1,
                               "baudrate": 115200}
    base.update(kw)
    return BusSettings(**base)  # type: ignore[arg-type]


def driver(line: FakeLine, **kw: object) -> Dlt645Driver:
    return Dlt645Driver(bus(**kw), transport=ExchangePipe(line, LineTiming()), response_delay=0.05)


def reply(di: int, payload: bytes, *, addr: bytes = WIRE, control: int = 0x91, pre: int = 0) -> bytes:
    return encode_frame(addr, control, di.to_bytes(4, "little") + payload, preamble=pre)


def refuse(control: int = 0xD1, code: int = 0x02) -> bytes:
    return encode_frame(WIRE, control, bytes([code]), preamble=0)


def energy(value: str) -> bytes:
    return encode_value(Decimal(value), "XXXXXX.XX")


ENERGY = [DiPoint("energy_import_kwh", 0x00010000, "XXXXXX.XX", "kWh", block=0x0001FF00, index=0),
          DiPoint("energy_import_kwh_t1", 0x00010100, "XXXXXX.XX", "kWh", block=0x0001FF00, index=1)]
SINGLE = [DiPoint("energy_import_kwh", 0x00010000, "XXXXXX.XX", "kWh")]
VOLT = [DiPoint("voltage_v_l1", 0x02010100, "XXX.X", "V")]


def di_of(frame: Frame) -> int:
    return int.from_bytes(frame.data[:4], "little")


async def test_echo_garbage_and_preamble_are_skipped() -> None:
    line = FakeLine(lambda f: b"\x00\x13\xfe" + reply(di_of(f), energy("12.34"), pre=4), echo=True)
    out = await driver(line).read(ADDR, compile_plan(SINGLE), 0.1)
    assert out["energy_import_kwh"].raw == Decimal("12.34")
    assert out["energy_import_kwh"].quality == "good"


async def test_reply_from_another_address_then_resynchronise() -> None:
    other = address_to_wire("000000000077")
    answers = iter([reply(0x00010000, energy("1.00"), addr=other), reply(0x00010000, energy("2.00"))])
    line = FakeLine(lambda f: next(answers))
    d = driver(line)
    plan = compile_plan(SINGLE)
    with pytest.raises(WrongAddressError, match="000000000077"):
        await d.read(ADDR, plan, 0.1)
    out = await d.read(ADDR, plan, 0.1)
    assert out["energy_import_kwh"].raw == Decimal("2.00")


async def test_late_reply_for_another_di_is_skipped() -> None:
    line = FakeLine(lambda f: reply(0x02010100, b"\x00\x22") + reply(di_of(f), energy("5.00")))
    out = await driver(line).read(ADDR, compile_plan(SINGLE), 0.1)
    assert out["energy_import_kwh"].raw == Decimal("5.00")


async def test_corrupted_reply_is_crc_error_for_its_points() -> None:
    def meter(f: Frame) -> bytes:
        wire = bytearray(reply(di_of(f), energy("5.00")))
        if di_of(f) == 0x00010000:
            wire[-2] ^= 0xFF
        return bytes(wire)

    plan = compile_plan([*SINGLE, DiPoint("x_other", 0x00020000, "XXXXXX.XX", "kWh")])
    out = await driver(FakeLine(meter)).read(ADDR, plan, 0.1)
    assert out["energy_import_kwh"].quality == "crc_error"
    assert "checksum" in (out["energy_import_kwh"].reason or "")
    assert out["x_other"].quality == "good"


async def test_silent_meter_is_a_read_timeout_and_truncated_too() -> None:
    with pytest.raises(ReadTimeout, match="did not answer DI 00010000"):
        await driver(FakeLine(lambda f: None)).read(ADDR, compile_plan(SINGLE), 0.1)
    with pytest.raises(ReadTimeout, match="incomplete reply"):
        await driver(FakeLine(lambda f: reply(di_of(f), energy("1"))[:-3])).read(ADDR, compile_plan(SINGLE), 0.1)


async def test_meter_that_stops_mid_read_marks_the_rest_timeout() -> None:
    def meter(f: Frame) -> bytes | None:
        return reply(di_of(f), energy("7.00")) if di_of(f) == 0x00010000 else None

    plan = compile_plan(SINGLE + VOLT)
    out = await driver(FakeLine(meter)).read(ADDR, plan, 0.1)
    assert out["energy_import_kwh"].quality == "good"
    assert out["voltage_v_l1"].quality == "timeout"


async def test_missing_value_is_invalid_and_refusal_is_exception() -> None:
    def meter(f: Frame) -> bytes:
        if di_of(f) == 0x00010000:
            return reply(0x00010000, b"\xee\xee\xee\xee")
        return refuse()

    out = await driver(FakeLine(meter)).read(ADDR, compile_plan(SINGLE + VOLT), 0.1)
    assert out["energy_import_kwh"].quality == "invalid" and out["energy_import_kwh"].raw is None
    assert "missing" in (out["energy_import_kwh"].reason or "")
    assert out["voltage_v_l1"].quality == "exception"
    assert "no requested data" in (out["voltage_v_l1"].reason or "")


async def test_block_refused_falls_back_and_is_remembered() -> None:
    def meter(f: Frame) -> bytes:
        di = di_of(f)
        if di == 0x0001FF00:
            return refuse()
        return reply(di, energy("100.00" if di == 0x00010000 else "40.00"))

    line = FakeLine(meter)
    d = driver(line)
    plan = compile_plan(ENERGY)
    out = await d.read(ADDR, plan, 0.1)
    assert out["energy_import_kwh"].raw == Decimal("100.00")
    assert out["energy_import_kwh_t1"].raw == Decimal("40.00")
    assert line.dis() == [0x0001FF00, 0x00010000, 0x00010100]
    assert d.unsupported_blocks(ADDR) == {0x0001FF00}
    await d.read(ADDR, plan, 0.1)
    assert line.dis()[3:] == [0x00010000, 0x00010100]


async def test_follow_up_chain_is_reassembled() -> None:
    values = [energy(v) for v in ("10.00", "1.00", "2.00", "3.00", "4.00")]
    whole = b"".join(values)

    def meter(f: Frame) -> bytes:
        di = di_of(f).to_bytes(4, "little")
        if f.control == 0x11:
            return encode_frame(WIRE, 0xB1, di + whole[:8], preamble=0)
        seq = f.data[4]
        part = whole[8:16] if seq == 1 else whole[16:]
        return encode_frame(WIRE, 0xB2 if seq == 1 else 0x92, di + part + bytes([seq]), preamble=0)

    line = FakeLine(meter)
    points = [DiPoint(n, 0x00010000 + (k << 8), "XXXXXX.XX", "kWh", block=0x0001FF00, index=k)
              for k, n in enumerate(["energy_import_kwh", "energy_import_kwh_t1", "energy_import_kwh_t2",
                                     "energy_import_kwh_t3", "energy_import_kwh_t4"])]
    out = await driver(line).read(ADDR, compile_plan(points), 0.1)
    assert [out[p.name].raw for p in points] == [Decimal(v) for v in ("10.00", "1.00", "2.00", "3.00", "4.00")]
    assert [f.control for f in line.sent] == [0x11, 0x12, 0x12]
    assert [f.data[4] for f in line.sent[1:]] == [1, 2]


async def test_1997_refused_block_falls_back() -> None:
    def meter(f: Frame) -> bytes:
        di = int.from_bytes(f.data[:2], "little")
        assert f.control == 0x01
        if di == 0x901F:
            return encode_frame(WIRE, 0xC1, b"\x01", preamble=0)
        return encode_frame(WIRE, 0x81, f.data[:2] + energy("9.00"), preamble=0)

    pts = [DiPoint("energy_import_kwh", 0x9010, "XXXXXX.XX", "kWh", block=0x901F, index=0),
           DiPoint("energy_import_kwh_t1", 0x9011, "XXXXXX.XX", "kWh", block=0x901F, index=1)]
    out = await driver(FakeLine(meter), protocol="dlt645-1997").read(
        ADDR, compile_plan(pts, protocol="dlt645-1997"), 0.1)
    assert out["energy_import_kwh_t1"].raw == Decimal("9.00")


async def test_meter_clock_rereads_the_date_after_midnight() -> None:
    dates = iter([encode_value(datetime(2026, 3, 1), "YYMMDDWW"), encode_value(datetime(2026, 3, 2), "YYMMDDWW")])

    def meter(f: Frame) -> bytes:
        di = di_of(f)
        if di == 0x04000101:
            return reply(di, next(dates))
        return reply(di, encode_value(datetime(2026, 3, 2, 0, 0, 2), "hhmmss"))

    clock = [DiPoint("meter_clock", 0x04000101, "YYMMDDWW", side="primary")]
    out = await driver(FakeLine(meter)).read(ADDR, compile_plan(clock), 0.1)
    assert out["meter_clock"].raw == "2026-03-02T00:00:02"


async def test_one_transaction_at_a_time() -> None:
    line = FakeLine(lambda f: reply(di_of(f), energy("1.00")), delay=0.01)
    d = driver(line)
    plan = compile_plan(SINGLE + VOLT[:0])
    results = await asyncio.gather(*(d.read(ADDR, plan, 0.1) for _ in range(5)))
    assert all(r["energy_import_kwh"].quality == "good" for r in results)
    assert line.overlaps == 0 and len(line.sent) == 5


async def test_broadcast_time_sync_needs_allow_writes() -> None:
    line = FakeLine(lambda f: None)
    with pytest.raises(ConfigError, match="allow_writes"):
        await driver(line).broadcast_time_sync(datetime(2024, 5, 1, 0, 0, 30))
    assert line.sent == []
    await driver(line, allow_writes=True).broadcast_time_sync(datetime(2024, 5, 1, 0, 0, 30))
    assert line.sent[0].encode(4) == bytes.fromhex(
        "FEFEFEFE68999999999999680806633333343857 0016".replace(" ", ""))


async def test_probe_and_read_address() -> None:
    def meter(f: Frame) -> bytes | None:
        if f.control == 0x13:
            return encode_frame(WIRE, 0x93, WIRE, preamble=0)
        return refuse() if f.address == WIRE else None

    d = driver(FakeLine(meter))
    assert await d.read_address(0.1) == ADDR
    assert await d.probe(ADDR, 0.1) is True
    assert await d.probe("000000000001", 0.1) is False
