"""The Modbus driver against real peers on loopback.

Interoperability is proven against pymodbus's own server (an independent implementation)
over Modbus TCP, RTU on a pty pair and RTU framed over TCP. Error cases (exceptions,
timeouts, garbled lines, wrong unit ids, cancellation) use pymodbus where it can play the
case and the project's simulator (with fault injection) where it cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.driver import ModbusDriver, create_driver
from drivers.modbus.plan import ReadPlan, compile_plan
from drivers.modbus.points import ModbusLimits, RegisterPoint
from drivers.modbus.simulator import ModbusSimulator, SimMeterSpec
from drivers.simulation.pty_pair import PtyPair, open_pty
from gateway.errors import FrameError, ReadTimeout, TransportError, WrongAddressError
from gateway.ports import free_port
from gateway.settings import BusSettings, Profile
from tests.servicefixtures import StillClock

pytestmark = pytest.mark.integration

F32_230_5 = [0x4366, 0x8000]


def rp(name: str, address: int, kind: str, scale: str = "1", function: int = 3) -> RegisterPoint:
    return RegisterPoint(name=name, function=function, address=address, type=kind,  # type: ignore[arg-type]
                         scale=Decimal(scale))


#: registers 0..9 of the pymodbus device: f32 230.5 · u32 123456 (×0.01) · i16 −5 · u16 7 ·
#: f32 NaN at 6..7 · 8..9 unused
REGS = [*F32_230_5, 0x0001, 0xE240, 0xFFFB, 7, 0x7FC0, 0x0000, 0, 0]
GOOD = [rp("voltage_v_l1", 0, "f32"), rp("energy_import_kwh", 2, "u32", "0.01"),
        rp("power_kw", 4, "i16"), rp("frequency_hz", 5, "u16")]


def pymodbus_device(unit: int = 1) -> SimDevice:
    return SimDevice(id=unit, simdata=[SimData(0, values=REGS, datatype=DataType.REGISTERS)])


@contextlib.asynccontextmanager
async def pymodbus_tcp(framer: FramerType = FramerType.SOCKET) -> AsyncIterator[int]:
    port = free_port()
    server = ModbusTcpServer(pymodbus_device(), framer=framer, address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield port
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


def tcp_bus(port: int, protocol: str = "modbus-tcp", **kw: Any) -> BusSettings:
    return BusSettings(id="lan", type="tcp", protocol=protocol, host="127.0.0.1",  # type: ignore[arg-type]
                       tcp_port=port, timeout_s=1.0, **kw)


def serial_bus(path: str) -> BusSettings:
    return BusSettings(id="rs485", type="serial", protocol="modbus-rtu", port=path, baudrate=9600,
                       parity="N", timeout_s=1.0)


async def test_tcp_reads_pymodbus_server_and_exception_marks_only_its_request() -> None:
    plan = compile_plan([*GOOD, rp("missing", 500, "u16")], ModbusLimits())
    assert len(plan.requests) == 2
    async with pymodbus_tcp() as port:
        driver = create_driver(tcp_bus(port))
        try:
            result = await driver.read("1", plan, 1.0)
        finally:
            await driver.close()
    assert result["voltage_v_l1"].raw == Decimal("230.5")
    assert result["energy_import_kwh"].raw == Decimal("1234.56")
    assert result["power_kw"].raw == Decimal(-5)
    assert result["frequency_hz"].raw == Decimal(7)
    assert all(result[p.name].quality == "good" for p in GOOD)
    assert result["missing"].quality == "exception"
    assert result["missing"].raw is None
    assert "illegal data address" in (result["missing"].reason or "")


async def test_nan_register_is_invalid_and_others_stand() -> None:
    plan = compile_plan([*GOOD, rp("power_factor", 6, "f32")], ModbusLimits())
    async with pymodbus_tcp() as port:
        driver = create_driver(tcp_bus(port))
        try:
            result = await driver.read("1", plan, 1.0)
        finally:
            await driver.close()
    assert result["power_factor"].quality == "invalid"
    assert result["voltage_v_l1"].quality == "good"


async def test_rtu_over_tcp_against_pymodbus() -> None:
    plan = compile_plan(GOOD, ModbusLimits())
    async with pymodbus_tcp(FramerType.RTU) as port:
        driver = create_driver(tcp_bus(port, "modbus-rtu-over-tcp"))
        try:
            for _ in range(3):
                result = await driver.read("1", plan, 1.0)
                assert result["energy_import_kwh"].raw == Decimal("1234.56")
        finally:
            await driver.close()


class PtyBridge:
    """Two pty pairs whose masters are cross-connected: a null-modem cable in software."""

    def __init__(self) -> None:
        self.a: PtyPair = open_pty()
        self.b: PtyPair = open_pty()
        loop = asyncio.get_running_loop()
        loop.add_reader(self.a.master, self._pump, self.a.master, self.b.master)
        loop.add_reader(self.b.master, self._pump, self.b.master, self.a.master)

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        try:
            data = os.read(src, 4096)
        except OSError:
            return
        with contextlib.suppress(OSError):
            os.write(dst, data)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for pair in (self.a, self.b):
            loop.remove_reader(pair.master)
            pair.close()


async def test_rtu_on_a_pty_against_pymodbus_serial_server() -> None:
    bridge = PtyBridge()
    server = ModbusSerialServer(pymodbus_device(3), framer=FramerType.RTU, port=bridge.a.path,
                                baudrate=9600, parity="N", ignore_missing_devices=True)
    await server.serve_forever(background=True)
    driver = create_driver(serial_bus(bridge.b.path))
    try:
        plan = compile_plan(GOOD, ModbusLimits())
        for _ in range(3):
            result = await driver.read("3", plan, 1.0)
            assert result["voltage_v_l1"].raw == Decimal("230.5")
        bad = await driver.read("3", compile_plan([rp("missing", 900, "u16")], ModbusLimits()), 1.0)
        assert bad["missing"].quality == "exception"          # an RTU exception reply
        result = await driver.read("3", plan, 1.0)             # and the port is still usable
        assert result["power_kw"].raw == Decimal(-5)
    finally:
        await driver.close()
        await server.shutdown()  # type: ignore[no-untyped-call]
        bridge.close()


# --- error cases against the project's simulator (fault injection) ------------------------

PROFILE = Profile(name="t", protocol="modbus", points={
    "energy_import_kwh": replace(rp("energy_import_kwh", 0, "u32", "0.01"), side="secondary"),
    "voltage_v_l1": replace(rp("voltage_v_l1", 2, "f32"), side="secondary"),
})


@pytest.fixture
def sim_specs() -> Iterator[list[SimMeterSpec]]:
    yield [SimMeterSpec(id="tcp", protocol="modbus-tcp", unit=1, profile=PROFILE, seed=1),
           SimMeterSpec(id="rtu", protocol="modbus-rtu", unit=5, profile=PROFILE, seed=2)]


def sim_plan() -> ReadPlan:
    return compile_plan([p for p in PROFILE.points.values() if isinstance(p, RegisterPoint)],
                        ModbusLimits())


@pytest.mark.parametrize("meter", ["tcp", "rtu"])
async def test_wrong_unit_reply_is_wrong_address_then_recovers(
        sim_specs: list[SimMeterSpec], meter: str) -> None:
    async with ModbusSimulator(sim_specs, StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, meter)
        unit = "1" if meter == "tcp" else "5"
        try:
            sim.set_fault(meter, "wrong_unit")
            with pytest.raises(WrongAddressError, match="unit"):
                await driver.read(unit, sim_plan(), 1.0)
            sim.set_fault(meter, None)
            result = await driver.read(unit, sim_plan(), 1.0)
            assert result["energy_import_kwh"].quality == "good"
        finally:
            await driver.close()


@pytest.mark.parametrize("fault", ["bad_crc", "garbage"])
async def test_garbled_rtu_line_is_frame_error_and_port_stays_usable(
        sim_specs: list[SimMeterSpec], fault: str) -> None:
    async with ModbusSimulator(sim_specs, StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, "rtu")
        try:
            sim.set_fault("rtu", fault)  # type: ignore[arg-type]
            with pytest.raises(FrameError) as info:
                await driver.read("5", sim_plan(), 1.0)
            assert not isinstance(info.value, WrongAddressError)
            sim.set_fault("rtu", None)
            result = await driver.read("5", sim_plan(), 1.0)
            assert result["voltage_v_l1"].quality == "good"
        finally:
            await driver.close()


async def test_a_late_rtu_reply_is_skipped_not_taken_for_the_next_request() -> None:
    """A slow meter on a pty (the simulator answers 0.25 s after each request): the first
    read (2 registers) times out at 0.1 s, the second (4 registers) is sent at once, so the
    late reply to the first arrives while the second waits. It is dropped and counted, and
    the second read gets its own reply."""
    spec = SimMeterSpec(id="slow", protocol="modbus-rtu", unit=5, profile=PROFILE, seed=2, turnaround_s=0.25)
    first = compile_plan([rp("energy_import_kwh", 0, "u32", "0.01")], ModbusLimits())
    async with ModbusSimulator([spec], StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, "slow")
        try:
            with pytest.raises(ReadTimeout):
                await driver.read("5", first, 0.1)
            result = await driver.read("5", sim_plan(), 1.0)
            pipe = driver.link.pipe                                # type: ignore[attr-defined]
            assert pipe.stats["skipped_frames"] == 1
        finally:
            await driver.close()
        want = sim.model("slow").values_at(1.77e9)
    assert result["energy_import_kwh"].raw == want["energy_import_kwh"]
    assert result["voltage_v_l1"].quality == "good"


@pytest.mark.parametrize(("transport", "unit", "advice"), [
    ("rtu", "5", "the wiring \\(A/B\\), the baud rate and the parity"),
    ("tcp", "1", "the device or Modbus gateway behind it is powered"),
])
async def test_a_silent_meter_times_out_naming_what_to_check(
        sim_specs: list[SimMeterSpec], transport: str, unit: str, advice: str) -> None:
    async with ModbusSimulator(sim_specs, StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, transport)
        try:
            sim.set_fault(transport, "silent")
            with pytest.raises(ReadTimeout, match=rf"unit {unit} .* did not answer within 0\.2 s; check .*{advice}"):
                await driver.read(unit, sim_plan(), 0.2)
        finally:
            await driver.close()


async def test_a_dead_port_is_a_transport_error_and_the_driver_reconnects_by_itself(
        sim_specs: list[SimMeterSpec]) -> None:
    async with ModbusSimulator(sim_specs, StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, "tcp")
        try:
            await sim.stop_meter("tcp")
            with pytest.raises(TransportError) as info:
                await driver.read("1", sim_plan(), 0.5)
            assert not isinstance(info.value, ReadTimeout)
            await sim.start_meter("tcp")
            result = await driver.read("1", sim_plan(), 1.0)   # reconnects by itself
            assert result["energy_import_kwh"].quality == "good"
        finally:
            await driver.close()


async def test_nothing_listening_is_a_clear_transport_error() -> None:
    driver = create_driver(tcp_bus(free_port()))
    with pytest.raises(TransportError, match="connection refused"):
        await driver.read("1", compile_plan(GOOD, ModbusLimits()), 0.5)
    await driver.close()
    await driver.close()                                        # safe to repeat


async def test_missing_serial_port_is_a_clear_transport_error() -> None:
    driver = create_driver(serial_bus("/dev/ttyAMR-does-not-exist"))
    with pytest.raises(TransportError, match="does not exist"):
        await driver.open()
    await driver.close()


@pytest.mark.parametrize("meter", ["tcp", "rtu"])
async def test_cancellation_cancels(sim_specs: list[SimMeterSpec], meter: str) -> None:
    async with ModbusSimulator(sim_specs, StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, meter)
        unit = "1" if meter == "tcp" else "5"
        try:
            await driver.read(unit, sim_plan(), 1.0)             # connected and working
            sim.set_fault(meter, "silent")
            task = asyncio.create_task(driver.read(unit, sim_plan(), 30.0))
            await asyncio.sleep(0.1)             # negative check: a while on a silent meter, still pending
            assert not task.done()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            sim.set_fault(meter, None)
            result = await driver.read(unit, sim_plan(), 1.0)  # and the link still works
            assert result["energy_import_kwh"].quality == "good"
        finally:
            await driver.close()


async def test_pymodbus_client_reads_the_same_values(sim_specs: list[SimMeterSpec]) -> None:
    """The driver and pymodbus's own client (an independent implementation, used here as a
    reference reader: the driver's pymodbus engine is gone) get the same register bytes
    from the same meter, so the driver's values are those pymodbus would give."""
    from pymodbus.client import AsyncModbusTcpClient

    plan = sim_plan()
    async with ModbusSimulator(sim_specs, StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, "tcp")
        ep = sim.endpoint("tcp")
        assert isinstance(ep, tuple)
        client = AsyncModbusTcpClient(ep[0], port=ep[1], timeout=1.0, retries=0)
        try:
            assert await client.connect()
            for request in plan.requests:
                ours = await driver.read_request("1", request, 1.0)
                rr = await client.read_holding_registers(request.address, count=request.count, device_id=1)
                assert not rr.isError()
                assert ours == b"".join(int(r).to_bytes(2, "big") for r in rr.registers)
            result = await driver.read("1", plan, 1.0)
        finally:
            client.close()
            await driver.close()
        want = sim.model("tcp").values_at(1.77e9)
    assert result["energy_import_kwh"].raw == want["energy_import_kwh"]


async def test_tcp_pipelining_many_units_on_one_connection() -> None:
    port = free_port()
    specs = [SimMeterSpec(id=f"m{u}", protocol="modbus-tcp", unit=u, profile=PROFILE, seed=u, port=port)
             for u in range(1, 9)]
    async with ModbusSimulator(specs, StillClock(1.77e9)) as sim:
        driver = create_driver(tcp_bus(port, concurrency=8))
        try:
            results = await asyncio.gather(*(driver.read(str(u), sim_plan(), 1.0) for u in range(1, 9)))
            for u, result in zip(range(1, 9), results, strict=True):
                want = sim.model(f"m{u}").values_at(1.77e9)["energy_import_kwh"]
                assert result["energy_import_kwh"].raw == want
            with pytest.raises(ReadTimeout, match="gateway reported"):
                await driver.read("77", sim_plan(), 1.0)       # no such unit behind the "gateway"
        finally:
            await driver.close()


def _driver_for(sim: ModbusSimulator, meter: str) -> ModbusDriver:
    ep = sim.endpoint(meter)
    bus = serial_bus(ep) if isinstance(ep, str) else tcp_bus(ep[1])
    return create_driver(bus)


def test_unit_id_must_be_a_number() -> None:
    from drivers.modbus.driver import parse_unit
    from gateway.errors import ConfigError

    assert parse_unit("247", "modbus-rtu") == 247
    with pytest.raises(ConfigError, match="use 1–247"):
        parse_unit("0", "modbus-rtu")
    with pytest.raises(ConfigError, match="not a unit id"):
        parse_unit("abc", "modbus-tcp")
    assert struct.calcsize(">H") == 2


@contextlib.asynccontextmanager
async def scripted_tcp_peer(replies: list[bytes | None]) -> AsyncIterator[int]:
    """A raw Modbus TCP peer on loopback answering each request with the next scripted reply
    PDU under the request's MBAP header (None: a malformed header). A fake by necessity:
    pymodbus's server and our simulator only send well-formed replies."""
    script = iter(replies)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readexactly(7)
            tid, _proto, length, unit = struct.unpack(">HHHB", head)
            await reader.readexactly(length - 1)
            pdu = next(script, b"\x03\x02\x00\x07")
            if pdu is None:
                writer.write(struct.pack(">HHHB", tid, 9, 3, unit) + b"\x03\x00")   # protocol id 9
            else:
                writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("reply, what", [
    (b"\x03\x02\x00", "a reply one byte short"),
    (b"\x03\x04\x00\x07\x00\x08", "a byte count for two registers when one was asked"),
    (b"\x04\x02\x00\x07", "another function code"),
    (None, "a malformed MBAP header (protocol id 9)"),
])
async def test_a_malformed_tcp_reply_is_a_frame_error_and_the_next_read_is_good(
        reply: bytes | None, what: str) -> None:
    plan = compile_plan([rp("frequency_hz", 5, "u16")], ModbusLimits())
    async with scripted_tcp_peer([reply]) as port:
        driver = create_driver(tcp_bus(port))
        try:
            with pytest.raises(FrameError):
                await driver.read("1", plan, 1.0)
            result = await driver.read("1", plan, 1.0)     # the link recovers (reconnects if reset)
        finally:
            await driver.close()
    assert result["frequency_hz"].quality == "good" and result["frequency_hz"].raw == Decimal(7), what


async def test_a_truncated_tcp_reply_then_a_timeout_does_not_poison_the_next_read() -> None:
    """Issue 16: the partial bytes of a truncated reply stayed in the receive buffer after the
    timeout, and the next reply was read behind them. A real TCP peer on a free loopback
    port sends only the header and the first PDU byte of its first reply (the header
    announces the whole ADU) and answers every later request whole. Scripted by necessity:
    no real Modbus server (pymodbus's, our simulator) can be told to cut a reply short."""
    requests: list[int] = []
    served = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    head = await reader.readexactly(7)
                    tid, _proto, length, unit = struct.unpack(">HHHB", head)
                    await reader.readexactly(length - 1)
                    requests.append(tid)
                    adu = struct.pack(">HHHB", tid, 0, 5, unit) + b"\x03\x02\x00\x07"
                    writer.write(adu[:8] if len(requests) == 1 else adu)
                    await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            served.set()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    plan = compile_plan([rp("frequency_hz", 5, "u16")], ModbusLimits())
    driver = create_driver(tcp_bus(port))
    try:
        with pytest.raises(ReadTimeout, match="incomplete reply"):
            await driver.read("1", plan, 0.2)
        for _ in range(3):                                  # the same connection, not reset
            result = await driver.read("1", plan, 1.0)
            assert result["frequency_hz"].quality == "good" and result["frequency_hz"].raw == Decimal(7)
    finally:
        await driver.close()
        async with asyncio.timeout(5):
            await served.wait()                             # the peer saw the connection end
        server.close()
        await server.wait_closed()
    assert len(requests) == 4


# --- chained reads (ModbusDriver.start_read) ----------------------------------------------


async def _chained(driver: ModbusDriver, unit: str, plan: ReadPlan) -> tuple[Any, Exception | None] | None:
    """``start_read``'s report, or None when it would not start."""
    done: asyncio.Future[tuple[Any, Exception | None]] = asyncio.get_running_loop().create_future()
    if not driver.start_read(unit, plan, 1.0, lambda results, error: done.set_result((results, error))):
        return None
    return await asyncio.wait_for(done, 5)


async def test_chained_read_of_pymodbus_server_equals_read_and_starts_only_when_connected() -> None:
    """Against pymodbus's server: a chained read gives exactly what ``read`` gives, the refused
    request included; it does not start before the connection is open (``read`` connects)."""
    plan = compile_plan([*GOOD, rp("missing", 500, "u16"), rp("power_factor", 6, "f32")], ModbusLimits())
    assert len(plan.requests) == 2
    async with pymodbus_tcp() as port:
        driver = create_driver(tcp_bus(port))
        try:
            assert await _chained(driver, "1", plan) is None          # not connected yet
            general = await driver.read("1", plan, 1.0)
            for _ in range(3):
                got = await _chained(driver, "1", plan)
                assert got is not None and got[1] is None
                assert got[0] == general
            assert general["missing"].quality == "exception" and general["power_factor"].quality == "invalid"
            assert general["energy_import_kwh"].raw == Decimal("1234.56")
        finally:
            await driver.close()
        assert await _chained(driver, "1", plan) is None              # closed


@pytest.mark.parametrize(("fault", "error"), [("wrong_unit", WrongAddressError), ("silent", ReadTimeout)])
async def test_chained_read_reports_the_error_read_raises_then_recovers(
        sim_specs: list[SimMeterSpec], fault: str, error: type[Exception]) -> None:
    """A meter that answers for another unit, or not at all: the chained read reports the same
    error class ``read`` raises, and the next read (either way) gets the meter's values."""
    async with ModbusSimulator(sim_specs, StillClock(1.77e9)) as sim:
        driver = _driver_for(sim, "tcp")
        try:
            expected = await driver.read("1", sim_plan(), 1.0)
            sim.set_fault("tcp", fault)  # type: ignore[arg-type]
            with pytest.raises(error):
                await driver.read("1", sim_plan(), 0.2)
            got = await _chained(driver, "1", sim_plan())
            assert got is not None and got[0] is None and isinstance(got[1], error)
            sim.set_fault("tcp", None)
            await asyncio.sleep(0.05)                 # past the drain of a late reply
            assert await driver.read("1", sim_plan(), 1.0) == expected
            got = await _chained(driver, "1", sim_plan())
            assert got == (expected, None)
        finally:
            await driver.close()
