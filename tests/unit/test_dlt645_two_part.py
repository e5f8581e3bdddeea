"""DL/T 645-2007 identifiers of the two-part tariff: quadrant reactive energy (0005…0008) and
forward active maximum demand with its time (0101 00nn), against docs/protocols/dlt645-2007.md
§6.2: XXXXXX.XX kvarh (4 B) and XX.XXXX kW (3 B) + YYMMDDhhmm (5 B) = 8 B, BCD, least
significant byte first."""

from __future__ import annotations

import asyncio
from datetime import datetime
from decimal import Decimal

import pytest

from drivers.dlt645 import catalogue, records
from drivers.dlt645.codec import ProtocolName
from drivers.dlt645.values import decode_datetime, decode_number, encode_value
from gateway.errors import DeviceException


@pytest.mark.parametrize(("di", "quadrant"), [(0x00050000, "I"), (0x00060000, "II"), (0x00070000, "III"),
                                               (0x00080000, "IV")])
def test_quadrant_reactive_dis(di: int, quadrant: str) -> None:
    info = catalogue.describe(di)
    assert info is not None and info.name == f"quadrant {quadrant} reactive energy total"
    assert (info.record, info.size, info.unit) == (("XXXXXX.XX",), 4, "kvarh")
    assert not catalogue.is_signed(di)                          # quadrant registers are magnitudes
    settled = catalogue.describe(di | 0x01)
    assert settled is not None and settled.name.endswith("at settlement day -1") and settled.size == 4
    block = catalogue.describe(di | 0xFF00)
    assert block is not None and block.size == 20
    day = catalogue.describe(0x05060000 | ((di >> 16) << 8) | 0x03)
    assert day is not None and day.size == 20 and "daily freeze -3" in day.name


def test_canonical_points_map_the_quadrants() -> None:
    by_name = {p.name: p for p in catalogue.CANONICAL_2007}
    for q, di in ((1, 0x00050000), (2, 0x00060000), (3, 0x00070000), (4, 0x00080000)):
        p = by_name[f"energy_q{q}_kvarh"]
        assert (p.di, p.fmt, p.unit, p.side) == (di, "XXXXXX.XX", "kvarh", "secondary")
    assert catalogue.SETTLEMENT_SINGLES[0x00080000] == "energy_q4_kvarh"
    assert catalogue.DAILY_FREEZE_REACTIVE[0x05] == "energy_q1_kvarh"


@pytest.mark.parametrize("n", [0, 1, 12])
def test_max_demand_and_time_record(n: int) -> None:
    info = catalogue.describe(0x01010000 | n)
    assert info is not None and (info.record, info.records, info.size) == (("XX.XXXX", "YYMMDDhhmm"), 1, 8)
    assert ("settlement day -" in info.name) == (n > 0)
    block = catalogue.describe(0x0101FF00 | n)
    assert block is not None and block.size == 40
    assert not catalogue.is_signed(0x01010000 | n)
    assert catalogue.describe(0x0101000D) is None               # 上1…上12 only


def test_demand_record_bytes() -> None:
    """12.3456 kW at 2026-12-05 10:30 → 56 34 12 | 30 10 05 12 26 (BCD, low byte first)."""
    payload = encode_value(Decimal("12.3456"), "XX.XXXX") + encode_value(datetime(2026, 12, 5, 10, 30), "YYMMDDhhmm")
    assert payload == bytes.fromhex("563412" "3010051226")
    assert decode_number(payload[:3], "XX.XXXX") == Decimal("12.3456")
    assert decode_datetime(payload[3:8], "YYMMDDhhmm") == datetime(2026, 12, 5, 10, 30)


def test_read_settlement_takes_demand_time_and_period_start() -> None:
    """A meter settling on the 1st, 11th and 21st, read on 2026-12-11 at 00:05: record 1 covers 1st–11th."""
    answers: dict[int, bytes] = {
        0x0001FF01: encode_value(Decimal("100.00"), "XXXXXX.XX") * 5,
        0x00050001: encode_value(Decimal("321.09"), "XXXXXX.XX"),
        0x00080001: encode_value(Decimal("7.50"), "XXXXXX.XX"),
        0x01010001: encode_value(Decimal("0.5125"), "XX.XXXX") + encode_value(datetime(2026, 12, 3, 10, 45),
                                                                             "YYMMDDhhmm"),
        0x04000B01: encode_value((1, 0), "DDhh"), 0x04000B02: encode_value((11, 0), "DDhh"),
        0x04000B03: encode_value((21, 0), "DDhh"),
        0x04000101: encode_value(datetime(2026, 12, 11).date(), "YYMMDDWW"),
        0x04000102: encode_value(datetime(2026, 12, 11, 0, 5), "hhmmss"),
    }

    async def read(addr: str, di: int, protocol: ProtocolName, timeout: float, expect: int | None) -> bytes:
        if di not in answers:
            raise DeviceException(0x02, "no requested data", hex(di))
        return answers[di]

    stamps: dict[str, datetime] = {}
    when, values = asyncio.run(records.read_settlement(read, {}, "000000000001", 1, 1.0, None, stamps))
    assert when == datetime(2026, 12, 11)
    assert values["energy_q1_kvarh"] == Decimal("321.09") and values["energy_q4_kvarh"] == Decimal("7.50")
    assert values["demand_max_kw"] == Decimal("0.5125") and values["energy_import_kwh"] == Decimal("100.00")
    assert stamps == {"demand_max_kw": datetime(2026, 12, 3, 10, 45), "demand_max_kw_at": datetime(2026, 12, 3, 10, 45),
                      "demand_period_start": datetime(2026, 12, 1)}
