"""DL/T 698.45 APDUs and values beyond the verified frames: DAR results, TimeTag,
FollowReport, ERROR-Response, SECURITY wrappers, A-XDR lengths and dates, exact scaling and
the behaviour chosen for the facts docs/protocols/dlt698-45.md marks medium (frequency's type)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from drivers.dlt698.apdu import (
    Csd,
    Dar,
    ErrorResponse,
    FollowReport,
    GetNormal,
    GetNormalList,
    GetRecord,
    GetResponseNormal,
    GetResponseNormalList,
    RecordResult,
    SelectAll,
    SelectLast,
    TimeTag,
    dar_name,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
    wrap_security_response,
)
from drivers.dlt698.axdr import (
    NULL,
    Data,
    DataType,
    Date,
    DateTime,
    DateTimeS,
    Road,
    Ti,
    array,
    date_time_s,
    decode_data,
    encode_count,
    encode_data,
    oad_of,
    oad_text,
    parse_oad,
    structure,
)
from drivers.dlt698.catalogue import BY_NAME
from drivers.dlt698.values import element, reading_value, scaled
from gateway.errors import DecodeError, FrameError

DLU = DataType.DOUBLE_LONG_UNSIGNED


def test_dar_names() -> None:
    assert dar_name(4) == "object undefined"
    assert dar_name(6) == "object does not exist"
    assert dar_name(20) == "security mismatch"
    assert dar_name(99) == "unknown DAR 99"
    assert Dar(3).name == "read/write denied"


def test_normal_list_reply_mixes_values_and_dars() -> None:
    apdu = bytes.fromhex("85 02 07 02 00 10 02 01 01 06 00 00 02 BB 20 0F 02 00 00 06 00 00")
    resp = parse_response(apdu)
    assert isinstance(resp, GetResponseNormalList)
    assert resp.results == ((0x00100201, Data(DLU, 699)), (0x200F0200, Dar(6)))
    assert encode_response(resp) == apdu


def test_time_tag_roundtrips_in_requests_and_responses() -> None:
    tag = TimeTag(DateTimeS(2026, 12, 6, 1, 30, 0), Ti(1, 5))
    req = GetNormal(1, 0x40000200, tag)
    apdu = encode_request(req)
    assert apdu[-11:] == bytes.fromhex("01 07 EA 0C 06 01 1E 00 01 00 05")
    assert parse_request(apdu) == req
    resp = GetResponseNormal(1, 0x40000200, date_time_s(datetime(2026, 12, 6, 1, 30)), time_tag=tag)
    assert parse_response(encode_response(resp)) == resp


def test_follow_report_is_parsed_not_ignored() -> None:
    follow = FollowReport(normal=((0x33200200, array(Data(DataType.OAD, 0x301B0200))),))
    resp = GetResponseNormal(2, 0x00100201, Data(DLU, 5), follow)
    apdu = encode_response(resp)
    # ... Data(5), then FollowReport present (01), choice 01, one result: OAD, 01 + Data, then no TimeTag.
    assert apdu.hex().upper().endswith("0106000000050101013320020001010151301B020000")
    assert parse_response(apdu) == resp
    records = FollowReport(records=(RecordResult(0x301B0200, (Csd(0x201E0200),),
                                                 ((date_time_s(datetime(2026, 1, 2, 3, 4, 5)),),)),))
    resp2 = GetResponseNormal(2, 0x00100201, Data(DLU, 5), records)
    assert parse_response(encode_response(resp2)) == resp2


def test_error_response_lib_vector_and_short_form() -> None:
    resp = parse_response(bytes.fromhex("EE 03 02 00 00"))
    assert resp == ErrorResponse(3, 2)
    assert isinstance(resp, ErrorResponse) and resp.name == "service not supported"
    assert encode_response(resp) == bytes.fromhex("EE 03 02 00 00")
    short = parse_response(bytes.fromhex("EE 03 01"))
    assert isinstance(short, ErrorResponse) and short.short and short.name == "APDU cannot be parsed"


def test_trailing_bytes_and_unknown_forms_are_frame_errors() -> None:
    good = encode_response(GetResponseNormal(1, 0x00100201, Data(DLU, 5)))
    with pytest.raises(FrameError, match="unexpected bytes"):
        parse_response(good + b"\x00")
    with pytest.raises(FrameError, match="form 4"):
        parse_response(bytes.fromhex("85 04 01"))
    with pytest.raises(FrameError, match="not a GET response"):
        parse_response(bytes.fromhex("86 01 01"))
    with pytest.raises(FrameError, match="not a GET request"):
        parse_request(bytes.fromhex("06 01 01 00 10 02 00 00"))
    with pytest.raises(FrameError, match="selector method 3"):
        parse_request(bytes.fromhex("05 03 01 50 04 02 00 03"))
    with pytest.raises(FrameError, match="FollowReport flag"):
        parse_response(good[:-2] + b"\x02\x00")


def test_security_response_plain_with_mac_is_opened_dar_and_cipher_refused() -> None:
    inner = encode_response(GetResponseNormal(1, 0x00100201, Data(DLU, 5)))
    wrapped = wrap_security_response(inner, b"\x01\x02\x03\x04")
    assert wrapped.endswith(bytes.fromhex("01 00 04 01 02 03 04"))
    assert parse_response(wrapped) == parse_response(inner)
    with pytest.raises(FrameError, match="DAR 20"):
        parse_response(bytes.fromhex("90 02 14 00"))
    with pytest.raises(FrameError, match="ciphertext"):
        parse_response(bytes.fromhex("90 01 02 AB CD 00"))


def test_record_request_forms() -> None:
    req = GetRecord(1, 0x50050200, SelectAll(), (Csd(0x20210200), Csd(0x50040200, (0x00100200, 0x00200200))))
    apdu = encode_request(req)
    assert apdu.hex().upper() == "0503015005020000020020210200015004020002001002000020020000"
    assert parse_request(apdu) == req
    # RSD 9 with n = 3, no columns, no TimeTag
    assert encode_request(GetRecord(1, 0x50040200, SelectLast(3), ())).hex().upper() == "0503015004020009030000"
    with pytest.raises(ValueError, match="at least one"):
        encode_request(GetNormalList(1, ()))


# --- A-XDR ------------------------------------------------------------------------------------


def test_lengths_of_128_and_more_take_length_bytes() -> None:
    assert encode_count(127) == b"\x7f"
    assert encode_count(200) == b"\x81\xc8"
    assert encode_count(300) == b"\x82\x01\x2c"
    d = Data(DataType.OCTET_STRING, bytes(300))
    assert encode_data(d)[:4] == bytes.fromhex("09 82 01 2C")
    assert decode_data(encode_data(d)) == d


def test_signed_integers_are_twos_complement_big_endian() -> None:
    assert encode_data(Data(DataType.DOUBLE_LONG, -1)) == bytes.fromhex("05 FF FF FF FF")
    assert decode_data(bytes.fromhex("10 FF 38")) == Data(DataType.LONG, -200)
    assert decode_data(bytes.fromhex("06 00 01 E2 40")) == Data(DLU, 123456)
    with pytest.raises(ValueError, match="does not fit"):
        encode_data(Data(DataType.LONG_UNSIGNED, 70000))
    with pytest.raises(ValueError):
        encode_data(Data(DataType.LONG_UNSIGNED, True))


def test_dates_decode_and_impossible_dates_are_decode_errors() -> None:
    assert DateTimeS(2016, 9, 11, 18, 30, 21).to_datetime() == datetime(2016, 9, 11, 18, 30, 21)
    assert DateTime(2026, 1, 2, 5, 3, 4, 5, 250).to_datetime() == datetime(2026, 1, 2, 3, 4, 5, 250000)
    assert Date(2026, 2, 28, 6).to_date().isoformat() == "2026-02-28"
    with pytest.raises(DecodeError, match="not a valid time"):
        DateTimeS(0xFFFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF).to_datetime()
    with pytest.raises(DecodeError):
        DateTimeS(2026, 2, 30, 0, 0, 0).to_datetime()


def test_road_and_oad_helpers() -> None:
    road = Data(DataType.ROAD, Road(0x50040200, (0x00100200, 0x20210200)))
    assert decode_data(encode_data(road)) == road
    assert oad_text(0x00100201) == "00100201"
    assert parse_oad("00100201") == 0x00100201 == oad_of(0x0010, 2, 1)
    with pytest.raises(ValueError):
        parse_oad("0010020")
    with pytest.raises(FrameError, match="unknown Data type"):
        decode_data(b"\x07\x00")


# --- values -------------------------------------------------------------------------------------


def test_scaling_is_exact_decimal() -> None:
    assert scaled(Data(DLU, 699), -2) == Decimal("6.99")
    assert str(scaled(Data(DLU, 699), -2)) == "6.99"
    assert scaled(Data(DataType.LONG64_UNSIGNED, 123456789012345678), -4) == Decimal("12345678901234.5678")
    assert scaled(Data(DataType.DOUBLE_LONG, -12345), -1) == Decimal("-1234.5")
    with pytest.raises(DecodeError, match="null"):
        scaled(NULL, -2)


def test_power_in_watts_becomes_kilowatts_exactly() -> None:
    p = BY_NAME["power_kw_l2"]
    assert p.oad == 0x20040203 and p.exponent == -4
    assert p.value(Data(DataType.DOUBLE_LONG, 12345)) == Decimal("1.2345")
    assert p.value(Data(DataType.DOUBLE_LONG, -5)) == Decimal("-0.0005")


def test_frequency_accepts_both_medium_types_and_nothing_else() -> None:
    f = BY_NAME["frequency_hz"]
    assert f.value(Data(DataType.LONG_UNSIGNED, 4998)) == Decimal("49.98")
    assert f.value(Data(DLU, 5001)) == Decimal("50.01")
    with pytest.raises(DecodeError, match="DOUBLE_LONG where LONG_UNSIGNED or DOUBLE_LONG_UNSIGNED"):
        f.value(Data(DataType.DOUBLE_LONG, 5000))


def test_demand_with_time_from_one_structure() -> None:
    value = structure(Data(DLU, 512345), date_time_s(datetime(2026, 11, 3, 14, 15)))
    assert BY_NAME["demand_max_kw"].value(value) == Decimal("51.2345")
    assert BY_NAME["demand_max_kw_at"].value(value) == "2026-11-03T14:15:00"
    assert BY_NAME["demand_max_kw"].oad == BY_NAME["demand_max_kw_at"].oad == 0x10100201


def test_element_and_reading_value_rules() -> None:
    volts = array(Data(DataType.LONG_UNSIGNED, 2241))
    assert element(volts, 0) == volts
    with pytest.raises(DecodeError, match="fewer tariffs or phases"):
        element(volts, 2)
    assert reading_value(Data(DataType.OCTET_STRING, bytes.fromhex("000039200933")), None) == "000039200933"
    assert reading_value(Data(DataType.LONG_UNSIGNED, 7), None) == 7
    assert reading_value(Data(DataType.BOOL, True), None) == 1
    with pytest.raises(DecodeError, match="expected a number"):
        reading_value(Data(DataType.STRUCTURE, ()), -2)
