"""The pure DL/T 698.45 meter responder and the point catalogue it serves.

The responder is the peer of the simulator and of the driver's tests, so each behaviour in
its module docstring is pinned here: addressing, echoes, values and DARs, record selection,
the security-only objects, and the ERROR-Response cases.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from drivers.dlt698.apdu import (
    Csd,
    Dar,
    ErrorResponse,
    GetNormal,
    GetNormalList,
    GetRecord,
    GetResponse,
    GetResponseNormal,
    GetResponseNormalList,
    GetResponseRecord,
    SelectAll,
    SelectLast,
    SelectRange,
    TimeTag,
    by_freeze_time,
    encode_request,
    parse_response,
    wrap_security_plain,
)
from drivers.dlt698.axdr import NULL, Data, DataType, DateTimeS, Ti, array, date_time_s, structure
from drivers.dlt698.catalogue import (
    BY_NAME,
    CANONICAL,
    EVENT_COLUMNS,
    EVENT_END_OAD,
    EVENT_NUMBER_OAD,
    EVENT_START_OAD,
    EVENTS,
    FREEZE_COLUMNS,
    FREEZE_TIME_OAD,
    FREEZES,
    event_record,
    freeze_points,
    scaler_oad,
)
from drivers.dlt698.frame import (
    C_REQUEST,
    C_RESPONSE,
    AddressType,
    ServerAddress,
    encode_frame,
    scan,
)
from drivers.dlt698.responder import MeterState, answer, reply_to

DLU = DataType.DOUBLE_LONG_UNSIGNED
ADDR = ServerAddress.single("000039200933")
CLOCK = datetime(2026, 12, 6, 1, 45, 30)


def energy(*raw: int) -> Data:
    return array(*(Data(DLU, v) for v in raw))


def day_row(day: int, total: int) -> dict[int, Data]:
    return {FREEZE_TIME_OAD: date_time_s(datetime(2026, 12, day)), 0x00100200: energy(total, 1, 2, 3, total - 6)}


def state(**kw: object) -> MeterState:
    s = MeterState(ADDR, CLOCK, registers={
        0x00100200: energy(699, 198, 203, 174, 124),
        0x20000200: array(*(Data(DataType.LONG_UNSIGNED, v) for v in (2241, 2250, 2239))),
        0x200F0200: Data(DataType.LONG_UNSIGNED, 4998),
    }, records={
        0x50040200: [day_row(d, 1000 + d) for d in (1, 2, 3, 4, 5)],
        0x301B0200: [
            {EVENT_NUMBER_OAD: Data(DLU, 1), EVENT_START_OAD: date_time_s(datetime(2026, 11, 1, 8)),
             EVENT_END_OAD: date_time_s(datetime(2026, 11, 1, 8, 5))},
            {EVENT_NUMBER_OAD: Data(DLU, 2), EVENT_START_OAD: date_time_s(datetime(2026, 12, 5, 23)),
             EVENT_END_OAD: NULL},
        ],
    })
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def ask(req: GetNormal | GetNormalList | GetRecord, st: MeterState | None = None) -> GetResponse:
    return parse_response(answer(encode_request(req), st or state()))


def test_normal_reads_whole_attribute_and_element() -> None:
    resp = ask(GetNormal(7, 0x00100202))
    assert isinstance(resp, GetResponseNormal) and resp.piid_acd == 7 and resp.oad == 0x00100202
    assert resp.result == Data(DLU, 198)
    whole = ask(GetNormal(8, 0x00100200))
    assert isinstance(whole, GetResponseNormal) and whole.result == energy(699, 198, 203, 174, 124)


def test_clock_and_address_come_from_the_state() -> None:
    resp = ask(GetNormalList(1, (0x40000200, 0x40010200)))
    assert isinstance(resp, GetResponseNormalList)
    (_, clock), (_, address) = resp.results
    assert isinstance(clock, Data) and BY_NAME["meter_clock"].value(clock) == "2026-12-06T01:45:30"
    assert address == Data(DataType.OCTET_STRING, bytes.fromhex("000039200933"))


def test_unknown_oads_and_elements_get_the_configured_dar() -> None:
    resp = ask(GetNormalList(1, (0x00200201, 0x00100207, 0x200F0200, 0x200F0201)))
    assert isinstance(resp, GetResponseNormalList)
    assert [r for _, r in resp.results] == [Dar(6), Dar(6), Data(DataType.LONG_UNSIGNED, 4998), Dar(6)]
    lib_like = ask(GetNormal(1, 0x00200201), state(unknown_dar=4))
    assert isinstance(lib_like, GetResponseNormal) and lib_like.result == Dar(4)


def test_secured_objects_answer_dar_20_in_plain_and_values_in_security_mode() -> None:
    st = state(secured=frozenset({0x0010}))
    plain = ask(GetNormal(1, 0x00100201), st)
    assert isinstance(plain, GetResponseNormal) and plain.result == Dar(20)
    wrapped = answer(wrap_security_plain(encode_request(GetNormal(1, 0x00100201)), bytes(16)), st)
    assert wrapped[:2] == b"\x90\x00" and wrapped.endswith(bytes.fromhex("01 00 04 00 00 00 00"))
    opened = parse_response(wrapped)
    assert isinstance(opened, GetResponseNormal) and opened.result == Data(DLU, 699)


def test_time_tag_is_echoed() -> None:
    tag = TimeTag(DateTimeS(2026, 12, 6, 1, 45, 0), Ti(1, 2))
    resp = ask(GetNormal(1, 0x200F0200, tag))
    assert isinstance(resp, GetResponseNormal) and resp.time_tag == tag


def rows_of(resp: GetResponse) -> tuple[tuple[Data, ...], ...]:
    assert isinstance(resp, GetResponseRecord)
    assert isinstance(resp.record.rows, tuple), resp.record.rows
    return resp.record.rows


def test_day_freeze_by_time_last_n_all_and_range() -> None:
    cols = (Csd(FREEZE_TIME_OAD), Csd(0x00100201))
    by_time = rows_of(ask(GetRecord(1, 0x50040200, by_freeze_time(DateTimeS(2026, 12, 3, 0, 0, 0)), cols)))
    assert by_time == ((date_time_s(datetime(2026, 12, 3)), Data(DLU, 1003)),)
    assert rows_of(ask(GetRecord(1, 0x50040200, SelectLast(1), cols)))[0][1] == Data(DLU, 1005)
    assert rows_of(ask(GetRecord(1, 0x50040200, SelectLast(5), cols)))[0][1] == Data(DLU, 1001)
    assert rows_of(ask(GetRecord(1, 0x50040200, SelectLast(6), cols))) == ()
    assert len(rows_of(ask(GetRecord(1, 0x50040200, SelectAll(), cols)))) == 5
    window = SelectRange(FREEZE_TIME_OAD, date_time_s(datetime(2026, 12, 2)), date_time_s(datetime(2026, 12, 4)))
    assert [r[1] for r in rows_of(ask(GetRecord(1, 0x50040200, window, cols)))] == [Data(DLU, 1002), Data(DLU, 1003)]
    missing_day = rows_of(ask(GetRecord(1, 0x50040200, by_freeze_time(DateTimeS(2026, 11, 30, 0, 0, 0)), cols)))
    assert missing_day == ()


def test_columns_the_rows_lack_are_null_and_road_columns_are_arrays() -> None:
    cols = (Csd(0x00200200), Csd(0x50040200, (0x00100201, 0x00100205, 0x00300200)))
    (row,) = rows_of(ask(GetRecord(1, 0x50040200, SelectLast(1), cols)))
    assert row == (NULL, array(Data(DLU, 1005), Data(DLU, 999), NULL))


def test_unknown_record_table_gets_a_dar() -> None:
    resp = ask(GetRecord(1, 0x50050200, SelectLast(1), (Csd(FREEZE_TIME_OAD),)))
    assert isinstance(resp, GetResponseRecord) and resp.record.rows == Dar(6)


def test_event_record_with_an_open_event() -> None:
    rows = rows_of(ask(GetRecord(1, EVENTS["cover_open"].oad, SelectLast(1), tuple(Csd(c) for c in EVENT_COLUMNS))))
    event = event_record(dict(zip(EVENT_COLUMNS, rows[0], strict=True)))
    assert (event.number, event.start, event.end) == (2, "2026-12-05T23:00:00", None)


def test_addressing_who_answers() -> None:
    st = state()
    apdu = encode_request(GetNormal(3, 0x40010200))
    for server, client in ((ADDR, 0x10), (ServerAddress.wildcard(), 0), (ServerAddress.wildcard("AAAAAAAA0933"), 5)):
        reply = reply_to(encode_frame(C_REQUEST, server, client, apdu, preamble=4), st)
        assert reply is not None
        f = scan(reply).frame
        assert f is not None and f.control == C_RESPONSE and f.server == ADDR and f.client == client
    for server in (ServerAddress.single("000039200934"), ServerAddress.broadcast(),
                   ServerAddress(AddressType.GROUP, ADDR.wire), ServerAddress.wildcard("AAAAAAAA0934")):
        assert reply_to(encode_frame(C_REQUEST, server, 0, apdu), st) is None
    assert reply_to(encode_frame(C_RESPONSE, ADDR, 0, apdu), st) is None        # a meter's frame
    assert reply_to(b"\x68\x00", st) is None


def test_other_services_and_garbage_get_error_responses() -> None:
    assert parse_response(answer(bytes.fromhex("02 01 00"), state())) == ErrorResponse(1, 2)
    assert parse_response(answer(bytes.fromhex("05 01 09 00 10"), state())) == ErrorResponse(9, 1)
    assert parse_response(answer(bytes.fromhex("10 01 02 AA BB 00"), state())) == ErrorResponse(0, 2)


# --- catalogue --------------------------------------------------------------------------------


SPEC_POINTS = (
    [f"energy_{d}_kwh{t}" for d in ("import", "export") for t in ("", "_t1", "_t2", "_t3", "_t4")]
    + ["energy_import_kvarh", "energy_export_kvarh", "demand_max_kw", "demand_max_kw_at", "power_kw",
       "power_kw_l1", "power_kw_l2", "power_kw_l3", "power_kvar", "power_kva", "power_factor", "frequency_hz",
       "meter_clock"]
    + [f"voltage_v_l{k}" for k in (1, 2, 3)] + [f"current_a_l{k}" for k in (1, 2, 3)]
    + [f"energy_q{k}_kvarh" for k in (1, 2, 3, 4)]
)


def test_catalogue_covers_the_canonical_points() -> None:
    assert set(SPEC_POINTS) <= set(BY_NAME)
    assert len(BY_NAME) == len(CANONICAL)
    assert BY_NAME["energy_import_kwh"].oad == 0x00100201
    assert BY_NAME["energy_import_kwh_t1"].oad == 0x00100202
    assert BY_NAME["energy_q3_kvarh"].oad == 0x00700201
    assert BY_NAME["current_a_l3"].oad == 0x20010203 and BY_NAME["current_a_l3"].exponent == -3
    assert BY_NAME["power_factor"].side == "primary"
    assert scaler_oad(0x00100201) == 0x00100300
    assert FREEZES["day"] == 0x50040200 and FREEZES["settlement"] == 0x50050200


@pytest.mark.parametrize("name", ["cover_open", "programming", "meter_clear", "clock_set", "voltage_loss_a"])
def test_catalogue_has_the_review_events(name: str) -> None:
    assert EVENTS[name].oad >> 16 in (0x301B, 0x3012, 0x3013, 0x3016, 0x3000)


def test_freeze_points_from_a_settlement_row() -> None:
    row = {
        FREEZE_TIME_OAD: date_time_s(datetime(2026, 12, 1)),
        0x00100200: energy(100000, 10000, 20000, 30000, 40000),
        0x00300200: array(Data(DataType.DOUBLE_LONG, -150)),
        0x10100200: array(structure(Data(DLU, 512345), date_time_s(datetime(2026, 11, 20, 10, 15)))),
        0x00200200: NULL,
    }
    pts = freeze_points(row)
    assert pts["freeze_time"] == "2026-12-01T00:00:00"
    assert pts["energy_import_kwh"] == Decimal("1000.00") and pts["energy_import_kwh_t4"] == Decimal("400.00")
    assert pts["energy_import_kvarh"] == Decimal("-1.50")
    assert pts["demand_max_kw"] == Decimal("51.2345") and pts["demand_max_kw_at"] == "2026-11-20T10:15:00"
    assert "energy_export_kwh" not in pts
    assert set(FREEZE_COLUMNS) >= set(row)
