"""DL/T 645 value formats, the DI catalogue, profiles and read-plan compilation."""

from __future__ import annotations

from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dlt645 import catalogue
from drivers.dlt645.discovery import address_range
from drivers.dlt645.plan import compile_plan
from drivers.dlt645.points import DiPoint
from drivers.dlt645.records import nth_previous_settlement
from drivers.dlt645.values import (
    FORMAT_NAMES,
    decode_datetime,
    decode_ddhh,
    decode_number,
    decode_time,
    decode_value,
    encode_number,
    encode_value,
    parse_format,
)
from gateway.errors import ConfigError, DecodeError
from gateway.profiles import load_profile

PROFILES = Path(__file__).resolve().parents[2] / "config" / "profiles"


# --- numbers --------------------------------------------------------------------------------------


def test_worked_example_is_exact() -> None:
    value = decode_number(bytes.fromhex("78563412"), "XXXXXX.XX")
    assert value == Decimal("123456.78") and str(value) == "123456.78"


def test_sign_bit_of_the_most_significant_byte() -> None:
    assert decode_number(bytes.fromhex("005080"), "XXX.XXX", signed=True) == Decimal("-5.000")
    assert decode_number(bytes.fromhex("005000"), "XXX.XXX", signed=True) == Decimal("5.000")
    assert decode_number(bytes.fromhex("0181"), "±X.XXX") == Decimal("-0.101")
    assert encode_number(Decimal("-5.000"), "XXX.XXX", signed=True) == bytes.fromhex("005080")


@pytest.mark.parametrize("fill", [b"\xee\xee\xee\xee", b"\xff\xff\xff\xff"])
def test_fill_bytes_are_missing_not_numbers(fill: bytes) -> None:
    with pytest.raises(DecodeError, match="missing"):
        decode_value(fill, "XXXXXX.XX")


def test_non_bcd_nibble_is_missing() -> None:
    with pytest.raises(DecodeError, match="missing"):
        decode_value(bytes.fromhex("7856341A"), "XXXXXX.XX")
    with pytest.raises(DecodeError, match="missing"):
        decode_value(bytes.fromhex("EE12"), "XXX.X")


def test_wrong_length_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="needs 4 bytes"):
        decode_number(b"\x01\x02", "XXXXXX.XX")


NUMBER_FORMATS = [f for f in FORMAT_NAMES if parse_format(f).kind == "number"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(NUMBER_FORMATS), st.integers(min_value=0, max_value=10**12), st.booleans())
def test_number_formats_round_trip(fmt: str, raw: int, negative: bool) -> None:
    f = parse_format(fmt)
    limit = 8 * 10 ** (f.digits - 1)
    mag = raw % limit
    value = Decimal(-mag if negative else mag).scaleb(-f.decimals)
    data = encode_number(value, f, signed=True)
    assert len(data) == f.size
    assert decode_number(data, f, signed=True) == value


def test_encode_range_wrap_and_clip() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_number(Decimal("1000000.00"), "XXXXXX.XX")
    assert decode_number(encode_number(Decimal("1000001.25"), "XXXXXX.XX", wrap=True), "XXXXXX.XX") == Decimal(
        "1.25"
    )
    assert decode_number(encode_number(Decimal("95.12345"), "XX.XXXX", clip=True), "XX.XXXX") == Decimal("95.1235")
    assert decode_number(encode_number(Decimal("123.4"), "XX.XXXX", clip=True), "XX.XXXX") == Decimal("99.9999")
    with pytest.raises(ValueError, match="negative"):
        encode_number(-1, "XXX.X")


def test_unknown_format_lists_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"XXXXXX\.XX, XX\.XXXX"):
        parse_format("XX.X")
    with pytest.raises(ValueError):
        parse_format("±YYMMDDhhmm")


# --- dates and times ------------------------------------------------------------------------------


def test_dates_and_times_round_trip() -> None:
    dt = datetime(2024, 5, 1, 13, 45, 30)
    assert decode_value(encode_value(dt, "YYMMDDhhmm"), "YYMMDDhhmm") == "2024-05-01T13:45"
    assert decode_value(encode_value(dt, "YYMMDDhhmmss"), "YYMMDDhhmmss") == "2024-05-01T13:45:30"
    wire = encode_value(date(2024, 5, 1), "YYMMDDWW")
    assert wire == bytes.fromhex("03010524")  # 2024-05-01 was a Wednesday (WW = 3)
    assert decode_value(wire, "YYMMDDWW") == "2024-05-01"
    assert decode_time(encode_value(time(23, 59, 58), "hhmmss")) == time(23, 59, 58)
    assert decode_value(encode_value((1, 0), "DDhh"), "DDhh") == "01T00"
    assert decode_value(encode_value(dt, "MMDDhhmm"), "MMDDhhmm") == "05-01T13:45"
    assert decode_datetime(encode_value(dt, "YYMMDDhhmm"), "YYMMDDhhmm") == datetime(2024, 5, 1, 13, 45)


def test_impossible_dates_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="not a valid YYMMDDhhmm"):
        decode_value(bytes.fromhex("0000321324"), "YYMMDDhhmm")  # month 13
    with pytest.raises(DecodeError, match="not a valid"):
        decode_value(bytes.fromhex("09010524"), "YYMMDDWW")      # weekday 9
    with pytest.raises(DecodeError, match="not set"):
        decode_ddhh(bytes.fromhex("9999"))


def test_counters_and_digits() -> None:
    assert decode_value(encode_value(42, "XXXXXX"), "XXXXXX") == 42
    assert decode_value(bytes.fromhex("080202412200"), "NNNNNNNNNNNN") == "002241020208"


# --- catalogue ----------------------------------------------------------------------------------


def test_catalogue_knows_blocks_records_and_freezes() -> None:
    block = catalogue.describe(0x0001FF00)
    assert block is not None and block.size == 20
    demand = catalogue.describe(0x01010000)
    assert demand is not None and demand.record == ("XX.XXXX", "YYMMDDhhmm") and demand.size == 8
    assert catalogue.describe(0x0201FF00) is not None
    assert catalogue.describe(0x05060001) is not None
    freeze = catalogue.describe(catalogue.daily_freeze_energy_di(62))
    assert freeze is not None and freeze.di == 0x0506013E and freeze.size == 20
    assert catalogue.describe(0x12345678) is None
    assert catalogue.describe(0xB611, "dlt645-1997") is not None


def test_signed_quantities_follow_the_standard() -> None:
    assert catalogue.is_signed(0x00000000)      # combined active
    assert not catalogue.is_signed(0x00010000)  # forward active
    assert catalogue.is_signed(0x02020100)      # current
    assert catalogue.is_signed(0x02060000)      # power factor
    assert not catalogue.is_signed(0x02010100)  # voltage
    assert not catalogue.is_signed(0x02800002)  # frequency
    assert not catalogue.is_signed(0xB630, "dlt645-1997")


@pytest.mark.parametrize(("name", "points"), [("dlt645-2007", catalogue.CANONICAL_2007),
                                              ("dlt645-1997", catalogue.CANONICAL_1997)])
def test_shipped_profile_equals_the_catalogue(name: str, points: tuple[DiPoint, ...]) -> None:
    profile = load_profile(PROFILES / f"{name}.yaml")
    assert profile.protocol == "dlt645"
    assert tuple(profile.points.values()) == points


# --- plans --------------------------------------------------------------------------------------


def test_canonical_plan_reads_blocks_and_shares_dis() -> None:
    plan = compile_plan(catalogue.CANONICAL_2007)
    dis = [s.di for s in plan.steps]
    assert dis[:2] == [0x0001FF00, 0x0002FF00]
    assert 0x0201FF00 in dis and 0x0202FF00 in dis and 0x0203FF00 in dis
    assert 0x00010000 not in dis
    demand = next(s for s in plan.steps if s.di == 0x01010000)
    assert demand.names == ("demand_max_kw", "demand_max_kw_at")
    assert [s.offset for s in demand.slots] == [0, 3]
    clock = next(s for s in plan.steps if s.di == 0x04000101)
    assert clock.clock_time_di == 0x04000102
    energy = plan.steps[0]
    assert [s.offset for s in energy.slots] == [0, 4, 8, 12, 16]
    assert [f.di for f in energy.fallback] == [0x00010000, 0x00010100, 0x00010200, 0x00010300, 0x00010400]
    current = next(s for s in plan.steps if s.di == 0x0202FF00)
    assert all(s.signed for s in current.slots)
    assert set(plan.points) == {p.name for p in catalogue.CANONICAL_2007}
    assert plan.requests == 29          # 17 + clear counters + Q1..Q4 reactive + per-phase 失压 and 潮流反向 (issue 17)


def test_a_lone_block_member_is_read_alone() -> None:
    pts = [DiPoint("energy_import_kwh", 0x00010000, "XXXXXX.XX", "kWh", block=0x0001FF00, index=0),
           DiPoint("voltage_v_l1", 0x02010100, "XXX.X", "V", block=0x0201FF00, index=0)]
    plan = compile_plan(pts)
    assert [s.di for s in plan.steps] == [0x00010000, 0x02010100]


def test_plan_errors_name_the_point() -> None:
    with pytest.raises(ConfigError, match="energy_import_kwh"):
        compile_plan([DiPoint("energy_import_kwh", 0x00010000, "XX.X")])
    with pytest.raises(ConfigError, match="does not fit dlt645-1997"):
        compile_plan([DiPoint("energy_import_kwh", 0x00010000, "XXXXXX.XX")], protocol="dlt645-1997")
    with pytest.raises(ConfigError, match="not part of it"):
        compile_plan([DiPoint("demand_max_kw", 0x01010000, "XXX.X")])
    with pytest.raises(ConfigError, match="twice"):
        compile_plan([DiPoint("x_a", 1, "NN"), DiPoint("x_a", 2, "NN")])


def test_1997_plan_uses_2_byte_blocks() -> None:
    plan = compile_plan(catalogue.CANONICAL_1997, protocol="dlt645-1997")
    assert plan.protocol == "dlt645-1997"
    assert plan.steps[0].di == 0x901F
    assert next(s for s in plan.steps if s.di == 0xC010).clock_time_di == 0xC011


# --- settlement instants and address ranges -----------------------------------------------------


def test_nth_previous_settlement() -> None:
    now = datetime(2026, 3, 15, 10, 0)
    assert nth_previous_settlement(now, [(1, 0)], 1) == datetime(2026, 3, 1)
    assert nth_previous_settlement(now, [(1, 0)], 2) == datetime(2026, 2, 1)
    three = [(1, 0), (11, 0), (21, 0)]
    assert nth_previous_settlement(now, three, 1) == datetime(2026, 3, 11)
    assert nth_previous_settlement(now, three, 3) == datetime(2026, 2, 21)
    assert nth_previous_settlement(datetime(2026, 3, 1, 0, 0), [(1, 0)], 1) == datetime(2026, 3, 1)
    assert nth_previous_settlement(datetime(2026, 3, 31), [(30, 0)], 2) == datetime(2026, 1, 30)
    with pytest.raises(ValueError):
        nth_previous_settlement(now, [], 1)


def test_address_range() -> None:
    assert list(address_range("1", "3")) == ["000000000001", "000000000002", "000000000003"]
    with pytest.raises(ConfigError, match="empty"):
        list(address_range("5", "3"))
    with pytest.raises(ConfigError, match="narrow"):
        list(address_range("1", "999999"))


def test_a_demand_record_without_a_maximum_yet_is_a_null_time_not_a_bad_reply() -> None:
    """After its demand reset a meter answers 01010000 with 00.0000 and time 00 00 00 00 00."""
    from drivers.dlt645.point_reads import extract

    demand = next(s for s in compile_plan(catalogue.CANONICAL_2007).steps if s.di == 0x01010000)
    value_slot, time_slot = demand.slots
    reset = bytes(8)
    assert extract(demand.di, value_slot, reset, None).raw == Decimal("0.0000")
    at = extract(demand.di, time_slot, reset, None)
    assert (at.raw, at.quality) == (None, "good")
    recorded = bytes.fromhex("00 50 12") + bytes.fromhex("30 14 05 12 26")      # 12.5000 kW at 26-12-05 14:30
    assert extract(demand.di, time_slot, recorded, None).raw == "2026-12-05T14:30"
    broken = bytes.fromhex("00 50 12") + bytes.fromhex("30 14 05 13 26")        # month 13
    assert extract(demand.di, time_slot, broken, None).quality == "invalid"
