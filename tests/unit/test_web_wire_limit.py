"""A bus's wire limit: the most reads per second its serial line can carry with its plans.

Each protocol's ``wire_time`` (through :func:`drivers.registry.wire_time`) against a limit
computed by hand from the formulas of docs/protocols/serial-timing.md (Modbus over Serial
Line v1.02, DL/T 645-2007 §5.3, the DL/T 698.45 frame): bytes on the wire × the character
time of the line's framing, plus the silences and the turnaround the protocol owes. The
figures of the reference table (14.5 reads/s for 20 registers at 9600 8E1; 4.5 and 3.4 DL/T
645 reads/s at 2400) come out of the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from drivers import registry
from drivers.base import BusParams, PointDef, ReadPlan
from drivers.dlt645.points import DiPoint
from drivers.dlt698.axdr import DataType
from drivers.dlt698.catalogue import OadPoint
from drivers.modbus.plan import ReadPlan as ModbusPlan
from drivers.modbus.plan import ReadRequest
from gateway.web.data import bus_wire_limit


def serial(protocol: str, baud: int, parity: str = "E", stopbits: int = 1, **kw: object) -> BusParams:
    return BusParams(id="b1", type="serial", protocol=protocol, port="/dev/ttyS1", baudrate=baud,
                     parity=parity, stopbits=stopbits, **kw)  # type: ignore[arg-type]


def modbus(*counts: int, pause_s: float = 0.0) -> ModbusPlan:
    return ModbusPlan(tuple(ReadRequest(3, 0, n, (), b"") for n in counts), pause_s)


def compiled(protocol: str, points: Sequence[PointDef]) -> ReadPlan:
    from drivers.base import NO_PLAN_OPTIONS
    return registry.compile_plan(protocol, points, NO_PLAN_OPTIONS)


def limit(protocol: str, bus: BusParams, plan: ReadPlan) -> float:
    t = registry.wire_time(protocol, bus, plan)
    assert t is not None
    return 1.0 / t


def test_modbus_rtu() -> None:
    # 9600 8E1, one read of 20 registers: Tc = 11/9600 s, t3.5 = 3.5 Tc;
    # (8 + 5 + 40) Tc + 2 t3.5 = 60.729 ms + 8.021 ms = 68.75 ms -> 14.545 reads/s (the table's 14.5)
    assert limit("modbus-rtu", serial("modbus-rtu", 9600), modbus(20)) == pytest.approx(1 / 0.06875)
    # 38400 8N1 (10 bits), reads of 2 and 60 registers, 10 ms pause between them: t3.5 fixed 1.75 ms;
    # (17 + 133) × 10/38400 s + 4 × 1.75 ms + 10 ms = 39.0625 + 7 + 10 ms = 56.0625 ms -> 17.837 reads/s
    assert limit("modbus-rtu", serial("modbus-rtu", 38400, "N"), modbus(2, 60, pause_s=0.010)) == pytest.approx(
        1 / 0.0560625)
    # 9600 8N2 is 11 bits a character like 8E1; the bus's own silence replaces t3.5: 53 Tc + 2 × 10 ms
    assert limit("modbus-rtu", serial("modbus-rtu", 9600, "N", 2, inter_frame_s=0.010), modbus(20)) == \
        pytest.approx(1 / (53 * 11 / 9600 + 0.020))


def test_dlt645_2007_and_1997() -> None:
    energy = DiPoint("energy_import_kwh", 0x00010000, "XXXXXX.XX")
    # 2400 8E1, one energy value: request 4 FE + 12 + DI 4 = 20 B, reply 4 FE + 12 + DI 4 + 4 = 24 B;
    # 44 × 11/2400 s + Td 20 ms = 221.67 ms -> 4.511 reads/s (the table's 4.5)
    assert limit("dlt645", serial("dlt645", 2400), compiled("dlt645", [energy])) == pytest.approx(1 / 0.2216667,
                                                                                                 rel=1e-5)
    # the block 0001FF00 (total + 4 tariffs, 20 value bytes) in one request: reply 40 B;
    # 60 × 11/2400 s + 20 ms = 295 ms -> 3.390 reads/s (the table's 3.4)
    block = [DiPoint(f"energy_import_t{k}_kwh" if k else "energy_import_kwh", 0x00010000 + k, "XXXXXX.XX",
                     block=0x0001FF00, index=k) for k in range(5)]
    assert limit("dlt645", serial("dlt645", 2400), compiled("dlt645", block)) == pytest.approx(1 / 0.295)
    # 1997 at 1200 8E1: 2-byte DI; request 18 B, reply 22 B; 40 × 11/1200 s + 20 ms = 386.67 ms
    old = DiPoint("energy_import_kwh", 0x9010, "XXXXXX.XX")
    assert limit("dlt645-1997", serial("dlt645-1997", 1200), compiled("dlt645-1997", [old])) == pytest.approx(
        1 / 0.3866667, rel=1e-5)


def test_dlt698() -> None:
    pts = [OadPoint("energy_import_kwh", 0x00100201, -2, "kWh", (DataType.DOUBLE_LONG_UNSIGNED,)),
           OadPoint("power_kw", 0x20040201, -1, "kW", (DataType.DOUBLE_LONG,))]
    # 9600 8E1, one NormalList of 2 OADs, 6-byte server address. Request: 4 FE + 68 + L 2 + C + AF
    # + SA 6 + CA + HCS 2 + APDU (05 02 PIID n, 2 × OAD 4, time tag = 13) + FCS 2 + 16 = 34 B.
    # Reply: 21 + APDU (85 02 PIID n, 2 × (OAD 4 + choice 1 + type 1 + 4), follow, time tag = 26) = 47 B.
    # 81 × 11/9600 s + Td 20 ms = 112.81 ms -> 8.864 reads/s
    assert limit("dlt698", serial("dlt698", 9600), compiled("dlt698", pts)) == pytest.approx(1 / 0.1128125)


def test_a_bus_limit_weighs_its_plans_by_how_often_they_run_and_tcp_has_none() -> None:
    bus = serial("modbus-rtu", 9600)
    # 20 registers (68.75 ms) every 60 s and 2 registers (17 Tc + 2 t3.5 = 27.5 ms) every 15 s:
    # (1/60 + 1/15) reads/s ÷ (0.06875/60 + 0.0275/15) s/s = 27.97 reads/s
    mix = [("modbus-rtu", modbus(20), 1 / 60), ("modbus-rtu", modbus(2), 1 / 15)]
    assert bus_wire_limit(bus, mix) == pytest.approx((1 / 60 + 1 / 15) / (0.06875 / 60 + 0.0275 / 15))
    assert bus_wire_limit(bus, []) is None                       # nothing polled: no figure
    tcp = BusParams(id="t1", type="tcp", protocol="modbus-tcp", host="127.0.0.1", tcp_port=502)
    assert bus_wire_limit(tcp, [("modbus-tcp", modbus(20), 1.0)]) is None
    assert registry.wire_time("modbus-tcp", tcp, modbus(20)) is None


def test_the_consoles_cached_limit_follows_a_reload() -> None:
    """The overview keeps each bus's limit until its meters' plans or line change: a reload
    that compiles new plans, or a new baud rate, gives the new limit (never the old one)."""
    from types import SimpleNamespace

    from gateway.web.data import ConsoleData

    def meter(plan: ReadPlan) -> object:        # the two fields wire_limit reads of a MeterRuntime
        return SimpleNamespace(settings=SimpleNamespace(protocol=None), plans={"realtime": (plan, None)})

    data = ConsoleData()
    every = {"realtime": 1.0}
    bus = serial("modbus-rtu", 9600)
    first = data.wire_limit(bus, [meter(modbus(20))], every)  # type: ignore[list-item]
    assert first == pytest.approx(1 / 0.06875)
    reloaded = data.wire_limit(bus, [meter(modbus(2))], every)  # type: ignore[list-item]
    assert reloaded == pytest.approx(limit("modbus-rtu", bus, modbus(2))) and reloaded > first
    faster = serial("modbus-rtu", 19200)
    plan = modbus(20)
    assert data.wire_limit(faster, [meter(plan)], every) == pytest.approx(  # type: ignore[list-item]
        limit("modbus-rtu", faster, plan))
