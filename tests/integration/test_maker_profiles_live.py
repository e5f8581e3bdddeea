"""The makers' profiles read the right values from a real Modbus server.

A pymodbus server (an independent implementation) is loaded with register values written
the way each maker's map describes them -- float32 high word first, float64, int64 Wh,
u64 x 0.01 kWh, registers numbered from 1 -- and the gateway's Modbus driver reads the
profile's whole plan from it over Modbus TCP. Each expected value is worked out by hand
from the map (not from the profile), so a wrong address, type, word order, scale or
address base in a profile fails here. Every other register of the plan reads zero, and
each point of the profile must come back "good".

Two mutations show that the expected values pin the encoding: the same registers served
one address higher (a map numbered from 1 read as if from 0) or with the words of every
multi-register value in reverse order (low word first instead of high word first) must
change every expected point the mutation touches.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.driver import create_driver
from gateway.config import SHIPPED_PROFILES_DIR
from gateway.ports import free_port
from gateway.profilecheck import plan_profile
from gateway.profiles import load_profile
from gateway.settings import BusSettings

pytestmark = pytest.mark.integration


def f32(x: float) -> list[int]:
    """float32, high word first (ABCD)."""
    return list(struct.unpack(">2H", struct.pack(">f", x)))


def f64(x: float) -> list[int]:
    """float64, high word first."""
    return list(struct.unpack(">4H", struct.pack(">d", x)))


def i64(x: int) -> list[int]:
    """signed 64-bit integer, high word first."""
    return list(struct.unpack(">4H", struct.pack(">q", x)))


def u64(x: int) -> list[int]:
    """unsigned 64-bit integer, high word first."""
    return list(struct.unpack(">4H", struct.pack(">Q", x)))


def i32(x: int) -> list[int]:
    """signed 32-bit integer, high word first."""
    return list(struct.unpack(">2H", struct.pack(">i", x)))


def i32le(x: int) -> list[int]:
    """signed 32-bit integer, LOW word first (Carlo Gavazzi)."""
    return list(reversed(i32(x)))


def u32(x: int) -> list[int]:
    """unsigned 32-bit integer, high word first."""
    return list(struct.unpack(">2H", struct.pack(">I", x)))


# profile -> {wire address: registers}, {point: expected value in the canonical unit}
CASES: dict[str, tuple[dict[int, list[int]], dict[str, Decimal]]] = {
    # Siemens PAC3200: offsets sent as they are, FC04, float32 / float64 (Wh) high word first
    "siemens-pac3200": (
        {1: f32(230.5), 7: f32(399.25), 13: f32(12.5), 43: f32(2.75), 55: f32(49.98),
         63: f32(9000.0), 65: f32(8500.0), 67: f32(-1250.0), 69: f32(0.875),
         223: f32(1.5), 801: f64(12345678.5), 805: f64(987654.25), 809: f64(2500.0),
         813: f64(125.0), 817: f64(4000.0), 837: f64(64000.0)},
        {"voltage_v_l1": Decimal("230.5"), "x_voltage_v_l1_l2": Decimal("399.25"),
         "current_a_l1": Decimal("12.5"), "x_thd_voltage_l1_pct": Decimal("2.75"),
         "frequency_hz": Decimal("49.98"), "x_power_kva": Decimal(9),
         "power_kw": Decimal("8.5"), "power_kvar": Decimal("-1.25"),
         "power_factor": Decimal("0.875"), "energy_import_kwh_t1": Decimal("12345.6785"),
         "energy_export_kwh_t1": Decimal("2.5"), "x_energy_import_kvarh_t1": Decimal(4),
         "energy_import_kwh_t2": Decimal("987.65425"), "energy_export_kwh_t2": Decimal("0.125"),
         "x_energy_kvah_t2": Decimal(64), "x_current_a_n": Decimal("1.5")},
    ),
    # Schneider PM5xxx: registers numbered from 1 (register 3028 is wire address 3027),
    # FC03, float32 in kW, int64 energies in Wh
    "schneider-pm5000": (
        {2999: f32(101.5), 3019: f32(400.5), 3027: f32(231.25), 3059: f32(65.5),
         3067: f32(-12.25), 3075: f32(70.0), 3109: f32(50.0),
         3203: i64(987654321), 3207: i64(1500), 3219: i64(123456), 3223: i64(7),
         3769: f32(88.25), 4195: i64(1000001), 4207: i64(42), 21329: f32(3.5)},
        {"current_a_l1": Decimal("101.5"), "x_voltage_v_l1_l2": Decimal("400.5"),
         "voltage_v_l1": Decimal("231.25"), "power_kw": Decimal("65.5"),
         "power_kvar": Decimal("-12.25"), "x_power_kva": Decimal(70),
         "frequency_hz": Decimal(50), "energy_import_kwh": Decimal("987654.321"),
         "energy_export_kwh": Decimal("1.5"), "energy_import_kvarh": Decimal("123.456"),
         "energy_export_kvarh": Decimal("0.007"), "demand_max_kw": Decimal("88.25"),
         "energy_import_kwh_t1": Decimal("1000.001"), "energy_import_kwh_t4": Decimal("0.042"),
         "x_thd_voltage_l1_pct": Decimal("3.5")},
    ),
    # ABB B23/B24: FC03, u64 energies x 0.01 kWh/kvarh, u32 voltage x 0.1 V, u32 current
    # x 0.01 A, i32 power x 0.01 W/var, u32 x 0.01 VA, u16 frequency x 0.01 Hz, i16 PF
    # x 0.001 (the Q/S/L-L/In values are the A43/A44 manual's worked example); tariff 1/2
    # import u64 x 0.01 kWh
    "abb-b23": (
        {0x5000: u64(1234567890), 0x5004: u64(4200), 0x500C: u64(98765), 0x5010: u64(1),
         0x5B00: u32(2305), 0x5B06: u32(4042), 0x5B0C: u32(1250), 0x5B12: u32(134),
         0x5B14: i32(-150000), 0x5B16: i32(2500000), 0x5B1C: i32(30017), 0x5B20: i32(-12214),
         0x5B24: u32(140739), 0x5B2C: [5002], 0x5B3A: [0xFC7C], 0x5170: u64(7654321),
         0x5174: u64(100001)},
        {"energy_import_kwh": Decimal("12345678.90"), "energy_export_kwh": Decimal(42),
         "voltage_v_l1": Decimal("230.5"), "current_a_l1": Decimal("12.5"),
         "power_kw": Decimal("-1.5"), "power_kw_l1": Decimal(25),
         "frequency_hz": Decimal("50.02"), "power_factor": Decimal("-0.9"),
         "energy_import_kvarh": Decimal("987.65"), "energy_export_kvarh": Decimal("0.01"),
         "x_voltage_v_l1_l2": Decimal("404.2"), "x_current_a_n": Decimal("1.34"),
         "power_kvar": Decimal("0.30017"), "x_power_kvar_l2": Decimal("-0.12214"),
         "x_power_kva": Decimal("1.40739"), "energy_import_kwh_t1": Decimal("76543.21"),
         "energy_import_kwh_t2": Decimal("1000.01")},
    ),
    # Eastron SDM630 (v2, MCT): FC04, float32 high word first, W/var/VA scaled to k; demand
    # registers in W/VA/A
    "eastron-sdm630": (
        {0x0000: f32(229.5), 0x0034: f32(-3000.0), 0x0038: f32(3500.0), 0x003C: f32(750.0),
         0x0048: f32(1234.5), 0x004A: f32(0.25), 0x0054: f32(4100.0), 0x0056: f32(12345.0),
         0x0066: f32(15250.0), 0x00C8: f32(398.5), 0x00EA: f32(1.75), 0x00F0: f32(12.5),
         0x0108: f32(31.5)},
        {"voltage_v_l1": Decimal("229.5"), "power_kw": Decimal(-3), "x_power_kva": Decimal("3.5"),
         "power_kvar": Decimal("0.75"), "energy_import_kwh": Decimal("1234.5"),
         "energy_export_kwh": Decimal("0.25"), "x_voltage_v_l1_l2": Decimal("398.5"),
         "x_thd_voltage_l1_pct": Decimal("1.75"), "x_thd_current_l1_pct": Decimal("12.5"),
         "x_demand_kw": Decimal("4.1"), "demand_max_kw": Decimal("12.345"),
         "x_demand_max_kva": Decimal("15.25"), "x_demand_max_current_a_l1": Decimal("31.5")},
    ),
    # CHINT DTSU666 (manual ZTY0.464.1002): FC03, float32 high word first, voltages in
    # 0.1 V, power in 0.1 W/var, PF in 0.001, energies in kWh/kvarh, UrAt in 0.1
    "chint-dtsu666": (
        {0x0007: [105], 0x101E: f32(5678.5), 0x1032: f32(321.25), 0x1050: f32(12.5),
         0x2000: f32(4001.0), 0x2006: f32(2305.0), 0x2012: f32(-15000.0),
         0x201C: f32(1234.0), 0x202C: f32(980.0)},
        {"x_pt_ratio": Decimal("10.5"), "energy_import_kwh": Decimal("5678.5"),
         "energy_q1_kvarh": Decimal("321.25"), "energy_q4_kvarh": Decimal("12.5"),
         "x_voltage_v_l1_l2": Decimal("400.1"), "voltage_v_l1": Decimal("230.5"),
         "power_kw": Decimal("-1.5"), "x_power_kvar_l1": Decimal("0.1234"),
         "x_power_factor_l1": Decimal("0.98")},
    ),
    # Schneider iEM3000: registers - 1 given in hex, FC03, float32 kW/kVA, int64 Wh (also the
    # rate 1-4 energies, registers 4196/4200/4204/4208)
    "schneider-iem3000": (
        {0x0BD3: f32(231.5), 0x0BF3: f32(12.25), 0x0C03: f32(13.5), 0x0C83: i64(4567890),
         0x1063: i64(1234567), 0x1067: i64(89), 0x106B: i64(7654321), 0x106F: i64(250)},
        {"voltage_v_l1": Decimal("231.5"), "power_kw": Decimal("12.25"), "x_power_kva": Decimal("13.5"),
         "energy_import_kwh": Decimal("4567.890"), "energy_import_kwh_t1": Decimal("1234.567"),
         "energy_import_kwh_t2": Decimal("0.089"), "energy_import_kwh_t3": Decimal("7654.321"),
         "energy_import_kwh_t4": Decimal("0.25")},
    ),
    # Janitza UMG 96RM: FC03 from 19000, float32 high word first, W/var/VA/Wh/varh scaled to k;
    # mean values (2500-2530) and max of mean values (3496-3510), float32, A / W / var / VA
    "janitza-umg96rm": (
        {19006: f32(400.5), 19034: f32(22500.0), 19044: f32(0.95), 19068: f32(123456.0),
         19100: f32(7000.0), 19110: f32(2.25), 2500: f32(64.5), 2514: f32(45500.0),
         2522: f32(-12500.0), 2530: f32(50250.0), 3496: f32(80.25), 3510: f32(61000.0)},
        {"x_voltage_v_l1_l2": Decimal("400.5"), "x_power_kva": Decimal("22.5"),
         "x_power_factor_l1": Decimal("0.95"), "energy_import_kwh": Decimal("123.456"),
         "x_energy_kvarh_inductive": Decimal(7), "x_thd_voltage_l1_pct": Decimal("2.25"),
         "x_demand_current_a_l1": Decimal("64.5"), "x_demand_kw": Decimal("45.5"),
         "x_demand_kvar": Decimal("-12.5"), "x_demand_kva": Decimal("50.25"),
         "x_demand_max_current_a_l1": Decimal("80.25"), "demand_max_kw": Decimal(61)},
    ),
    # Carlo Gavazzi EM24 DIN: FC04, INT32 low word first, 0.1 V / 0.1 W / 0.1 kWh, PF INT16;
    # demand (PFA/PFB/X protocol, Table 2.3-1): W*10, VA*10, A*1000
    "carlo-gavazzi-em24": (
        {0x06: i32le(4005), 0x28: i32le(-123456), 0x2C: i32le(-12345), 0x32: [0xFC4A],
         0x3E: i32le(1234567), 0x40: i32le(89), 0x5C: i32le(70000), 0x5E: i32le(1),
         0x2E: i32le(123450), 0x30: i32le(150001), 0x38: i32le(250005), 0x3A: i32le(300000),
         0x3C: i32le(45678)},
        {"x_voltage_v_l1_l2": Decimal("400.5"), "power_kw": Decimal("-12.3456"),
         "power_kvar": Decimal("-1.2345"), "x_power_factor_l1": Decimal("-0.95"),
         "energy_import_kwh": Decimal("123456.7"), "energy_import_kvarh": Decimal("8.9"),
         "energy_export_kwh": Decimal(7000), "energy_export_kvarh": Decimal("0.1"),
         "x_demand_kw": Decimal("12.345"), "x_demand_kva": Decimal("15.0001"),
         "demand_max_kw": Decimal("25.0005"), "x_demand_max_kva": Decimal(30),
         "x_demand_max_current_a": Decimal("45.678")},
    ),
    # Acrel ADL400 classic layout: FC03, u32 energies x 0.01 kWh high word first, u16
    # voltages x 0.1 V, i32 power in W, i16 PF x 0.001 (secondary values: raw before CT/PT)
    "acrel-adl400": (
        {0x000A: u32(1234567), 0x0061: [2305], 0x0077: [4998], 0x0078: [4001],
         0x016A: i32(-1500), 0x017A: i32(2500), 0x017F: [0xFC7C]},
        {"energy_import_kwh": Decimal("12345.67"), "voltage_v_l1": Decimal("230.5"),
         "frequency_hz": Decimal("49.98"), "x_voltage_v_l1_l2": Decimal("400.1"),
         "power_kw": Decimal("-1.5"), "x_power_kva": Decimal("2.5"),
         "power_factor": Decimal("-0.9")},
    ),
    # Socomec DIRIS A-40: FC03 from 0xC550, 32-bit integers high word first, V/100, mA,
    # 10 W / 10 var / 10 VA, PF 0.001 (signed), energies in kWh, one-word THD in 0.1 %
    "socomec-diris-a40": (
        {0xC550: u32(909104), 0xC552: u32(40476), 0xC558: u32(23355), 0xC55E: u32(5001),
         0xC560: u32(94016), 0xC568: i32(4672), 0xC56A: i32(-4171), 0xC56C: u32(6263),
         0xC56E: i32(-745), 0xC570: i32(1641), 0xC652: u32(7476757), 0xC654: u32(4688014),
         0xC658: u32(25), 0xC65A: u32(146047), 0xC65C: u32(7000001), 0xC950: [25],
         0xC956: [123]},
        {"x_hour_meter_h": Decimal("9091.04"), "x_voltage_v_l1_l2": Decimal("404.76"),
         "voltage_v_l1": Decimal("233.55"), "frequency_hz": Decimal("50.01"),
         "current_a_l1": Decimal("94.016"), "power_kw": Decimal("46.72"),
         "power_kvar": Decimal("-41.71"), "x_power_kva": Decimal("62.63"),
         "power_factor": Decimal("-0.745"), "power_kw_l1": Decimal("16.41"),
         "energy_import_kwh": Decimal(7476757), "energy_import_kvarh": Decimal(4688014),
         "energy_export_kwh": Decimal(25), "energy_export_kvarh": Decimal(146047),
         "x_energy_partial_import_kwh": Decimal(7000001),
         "x_thd_voltage_l1_l2_pct": Decimal("2.5"), "x_thd_current_l1_pct": Decimal("12.3")},
    ),
}


@contextlib.asynccontextmanager
async def serving(blocks: list[SimData]) -> AsyncIterator[int]:
    """A pymodbus Modbus TCP server on loopback holding *blocks* for unit 1."""
    port = free_port()
    server = ModbusTcpServer(SimDevice(id=1, simdata=blocks), address=("127.0.0.1", port))
    await server.serve_forever(background=True)
    try:
        yield port
    finally:
        await server.shutdown()  # type: ignore[no-untyped-call]


async def read_profile_from(name: str, registers: dict[int, list[int]]) -> dict[str, Any]:
    """Serve *registers* (every other register of the plan zero) and read the profile's plan."""
    profile = load_profile(SHIPPED_PROFILES_DIR / f"{name}.yaml")
    _, plan = plan_profile(profile)
    blocks: list[SimData] = []
    for request in plan.requests:
        values = [0] * request.count
        for address, words in registers.items():
            for i, word in enumerate(words):
                if request.address <= address + i < request.address + request.count:
                    values[address + i - request.address] = word
        blocks.append(SimData(request.address, values=values, datatype=DataType.REGISTERS))
    async with serving(blocks) as port:
        driver = create_driver(BusSettings(id="lan", type="tcp", protocol="modbus-tcp",
                                           host="127.0.0.1", tcp_port=port, timeout_s=2.0))
        try:
            result: dict[str, Any] = await driver.read("1", plan, 2.0)
        finally:
            await driver.close()
    assert set(result) == set(profile.points)
    return result


@pytest.mark.parametrize("name", sorted(CASES))
async def test_profile_reads_the_makers_encoding_from_a_pymodbus_server(name: str) -> None:
    registers, expected = CASES[name]
    _, plan = plan_profile(load_profile(SHIPPED_PROFILES_DIR / f"{name}.yaml"))
    placed = {a for r in plan.requests for a in range(r.address, r.address + r.count)}
    assert all(a + i in placed for a, w in registers.items() for i in range(len(w))), \
        "a register of the case lies outside the profile's plan"
    result = await read_profile_from(name, registers)
    bad = {k: (r.quality, r.reason) for k, r in result.items() if r.quality != "good"}
    assert not bad
    got = {point: result[point].raw for point in expected}
    assert got == expected


@pytest.mark.parametrize("name", sorted(CASES))
async def test_an_address_one_off_changes_every_expected_point(name: str) -> None:
    registers, expected = CASES[name]
    result = await read_profile_from(name, {a + 1: w for a, w in registers.items()})
    same = {p for p in expected if result[p].quality == "good" and result[p].raw == expected[p]}
    assert not same, f"read the same one register off: {sorted(same)}"


@pytest.mark.parametrize("name", sorted(CASES))
async def test_swapped_words_change_every_multi_register_point(name: str) -> None:
    registers, expected = CASES[name]
    profile = load_profile(SHIPPED_PROFILES_DIR / f"{name}.yaml")
    multi = {p for p in expected if profile.points[p].width > 1}  # type: ignore[union-attr]
    assert multi, "the case has no multi-register value to swap"
    result = await read_profile_from(name, {a: list(reversed(w)) for a, w in registers.items()})
    same = {p for p in multi if result[p].quality == "good" and result[p].raw == expected[p]}
    assert not same, f"read the same with the words swapped: {sorted(same)}"
