"""DL/T 698.45 codec against every verified frame of ``docs/protocols/dlt698-45.md`` §7.

Each frame decodes to the values its source documents; each request is rebuilt byte for
byte from its meaning (addresses, PIID, OADs, selectors); replies are re-encoded byte for
byte from their decoded form, and the pure responder reproduces R1's reply from a meter
state alone. Provenance per frame (sources in docs/protocols/dlt698-45.md §0): R1 standard appendix H.3, R2 csdn
real meter, R3 yingsuda, R4 hplc emulated meter, R5 lib docs, R6 sim, R7 hplc + sim, R8 wenyl.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest

from drivers.dlt698.apdu import (
    Csd,
    GetNormal,
    GetNormalList,
    GetRecord,
    GetResponseNormal,
    GetResponseNormalList,
    GetResponseRecord,
    SelectLast,
    SelectRange,
    by_freeze_time,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
    unwrap_security,
    wrap_security_plain,
)
from drivers.dlt698.axdr import Data, DataType, DateTimeS, Ti, date_time_s
from drivers.dlt698.catalogue import BY_NAME, EVENT_END_OAD, EVENT_START_OAD, event_record
from drivers.dlt698.frame import C_REQUEST, C_RESPONSE, AddressType, Frame, ServerAddress, encode_frame, scan
from drivers.dlt698.responder import MeterState, reply_to
from drivers.dlt698.values import reading_value, scaled


def h(text: str) -> bytes:
    return bytes.fromhex(text)


R1_REQ = h("68 17 00 43 45 AA AA AA AA AA AA 00 5B 4F 05 01 25 40 01 02 00 00 0A 92 16")
R1_REP = h("68 21 00 C3 05 33 09 20 39 00 00 00 4A 55 85 01 25 40 01 02 00 01 09 06 00 00 39 20 09 33"
           " 00 00 B2 D8 16")
R2_REQ = h("68 15 00 43 03 91 78 41 28 00 EB 64 05 01 00 00 10 04 00 00 0C CB 16")
R2_REP = h("68 46 00 C3 03 91 78 41 28 00 06 2D 85 01 00 00 10 04 00 01 01 05" + " 15 00 00 00 00 00 00 00 00" * 5
           + " 00 00 C3 52 16")
R3_REQ = h("68 17 00 43 05 01 00 00 00 00 00 10 26 F6 05 01 05 40 00 02 00 00 D1 0B 16")
R3_REP = h("68 21 00 C3 05 01 00 00 00 00 00 10 49 54 85 01 05 40 00 02 00 01 1C 07 E0 09 0B 12 1E 15"
           " 00 00 2A FB 16")
R4_REQ = h("68 18 00 43 05 04 33 00 00 00 00 10 64 D1 05 02 00 01 00 10 02 00 00 91 04 16")
R4_REP = h("68 35 00 C3 05 04 33 00 00 00 00 10 57 40 85 02 00 01 00 10 02 00 01 01 05 06 00 00 02 BB"
           " 06 00 00 00 C6 06 00 00 00 CB 06 00 00 00 AE 06 00 00 00 7C 00 00 55 43 16")
R5_REQ = h("68 2A 00 43 05 00 00 00 00 00 00 00 D3 5D 05 03 00 50 04 02 00 01 20 21 02 00 1C 07 EA 0A"
           " 05 00 00 00 01 00 00 10 02 01 00 82 30 16")
R5_REP = h("68 25 00 C3 05 00 00 00 00 00 00 00 48 85 85 03 00 50 04 02 00 01 00 00 10 02 01 01 01 06"
           " 00 01 E2 40 00 00 3A 61 16")
R6_REQ = h("68 24 00 43 05 02 00 00 00 00 00 00 B5 23 05 03 00 30 11 02 00 09 01 02 00 20 1E 02 00 00"
           " 20 20 02 00 00 8A 46 16")
R6_REP = h("68 35 00 C3 05 02 00 00 00 00 00 00 B6 C3 85 03 00 30 11 02 00 02 00 20 1E 02 00 00 20 20"
           " 02 00 01 01 1C 07 E1 02 02 03 02 11 1C 07 E1 02 02 04 02 04 00 00 C7 6B 16")
R7_REQ1 = h("68 29 00 43 05 43 01 21 07 15 20 02 DE 48 05 03 02 50 04 02 00 09 01 03 00 20 21 02 00 00"
            " 00 10 02 00 00 00 20 02 00 00 5C 81 16")
R7_REQ2 = h("68 5F 00 43 05 04 00 00 00 00 00 00 AB 67 10 00 3B 05 03 00 50 02 02 00 02 20 21 02 00 1C"
            " 07 E3 01 0B 00 1E 00 1C 07 E3 01 0B 00 2C 3B 54 01 00 0F 05 00 00 00 02 00 00 00 10 02 00"
            " 00 00 20 02 00 00 00 30 02 00 00 20 21 02 00 00 01 10 DB E8 74 E8 68 E2 81 80 62 D5 7A 78"
            " 09 72 0F 39 BF E6 16")
R8_REP = h("68 24 00 C3 05 01 00 20 03 25 01 00 0E 29 85 01 00 20 00 02 00 01 01 03 12 08 C1 12 00 00 12"
           " 00 00 00 00 F2 EC 16")

REQUESTS = [R1_REQ, R2_REQ, R3_REQ, R4_REQ, R5_REQ, R6_REQ, R7_REQ1, R7_REQ2]
REPLIES = [R1_REP, R2_REP, R3_REP, R4_REP, R5_REP, R6_REP, R8_REP]


def frame_of(wire: bytes) -> Frame:
    found = scan(wire)
    assert found.frame is not None, found.rejected
    assert found.used == len(wire)
    return found.frame


def request(server: ServerAddress, client: int, apdu: bytes) -> bytes:
    return encode_frame(C_REQUEST, server, client, apdu)


@pytest.mark.parametrize("wire", REQUESTS + REPLIES, ids=lambda w: w[:16].hex())
def test_every_verified_frame_decodes_and_reencodes(wire: bytes) -> None:
    frame = frame_of(wire)
    assert len(wire) == int.from_bytes(wire[1:3], "little") + 2
    assert frame.encode() == wire
    assert frame.from_server == (wire[3] == C_RESPONSE)
    if frame.from_server:
        assert encode_response(parse_response(frame.apdu)) == frame.apdu
    elif frame.apdu[0] == 0x05:
        assert encode_request(parse_request(frame.apdu)) == frame.apdu


@pytest.mark.parametrize("wire", REQUESTS + REPLIES, ids=lambda w: w[:16].hex())
def test_every_verified_frame_survives_the_fe_prefix_and_noise(wire: bytes) -> None:
    found = scan(h("00 68 FF FE FE FE FE") + wire + h("68 01"))
    assert found.frame is not None and found.frame.encode() == wire
    assert found.used == 7 + len(wire)


def test_r1_wildcard_read_of_the_address() -> None:
    wire = request(ServerAddress.wildcard(), 0x00, encode_request(GetNormal(0x25, 0x40010200)))
    assert wire == R1_REQ
    req = frame_of(R1_REQ)
    assert req.server.kind == AddressType.WILDCARD and req.server.af == 0x45
    rep = frame_of(R1_REP)
    assert rep.control == 0xC3 and rep.server.kind == AddressType.SINGLE and rep.server.af == 0x05
    assert rep.server.text == "000039200933"
    resp = parse_response(rep.apdu)
    assert isinstance(resp, GetResponseNormal)
    assert (resp.piid_acd, resp.oad) == (0x25, 0x40010200)
    assert isinstance(resp.result, Data)
    assert reading_value(resp.result, None) == "000039200933"
    assert resp.follow is None and resp.time_tag is None


def test_r1_reply_is_what_the_responder_builds_from_the_meter_state() -> None:
    state = MeterState(ServerAddress.single("000039200933"), datetime(2026, 1, 1))
    assert reply_to(R1_REQ, state) == R1_REP


def test_r2_four_byte_address_and_high_precision_energy() -> None:
    server = ServerAddress.single("28417891", size=4)
    assert server.af == 0x03
    assert request(server, 0, encode_request(GetNormal(0, 0x00100400))) == R2_REQ
    resp = parse_response(frame_of(R2_REP).apdu)
    assert isinstance(resp, GetResponseNormal) and isinstance(resp.result, Data)
    items = resp.result.items
    assert [d.type for d in items] == [DataType.LONG64_UNSIGNED] * 5
    assert [scaled(d, -4) for d in items] == [Decimal(0)] * 5


def test_r3_meter_clock() -> None:
    assert request(ServerAddress.single("000000000001"), 0x10, encode_request(GetNormal(5, 0x40000200))) == R3_REQ
    rep = frame_of(R3_REP)
    assert rep.client == 0x10
    resp = parse_response(rep.apdu)
    assert isinstance(resp, GetResponseNormal) and isinstance(resp.result, Data)
    assert resp.piid_acd == 5
    assert BY_NAME["meter_clock"].value(resp.result) == "2016-09-11T18:30:21"


def test_r4_normal_list_energy_total_and_tariffs() -> None:
    server = ServerAddress.single("000000003304")
    assert request(server, 0x10, encode_request(GetNormalList(0, (0x00100200,)))) == R4_REQ
    resp = parse_response(frame_of(R4_REP).apdu)
    assert isinstance(resp, GetResponseNormalList)
    ((oad, result),) = resp.results
    assert oad == 0x00100200 and isinstance(result, Data)
    values = [BY_NAME["energy_import_kwh" + s].value(result.items[k]) for k, s in
              enumerate(("", "_t1", "_t2", "_t3", "_t4"))]
    assert values == [Decimal("6.99"), Decimal("1.98"), Decimal("2.03"), Decimal("1.74"), Decimal("1.24")]
    assert sum(values[1:]) == values[0]
    assert str(values[0]) == "6.99"


def test_r5_day_freeze_by_freeze_time() -> None:
    req = GetRecord(0, 0x50040200, by_freeze_time(DateTimeS(2026, 10, 5, 0, 0, 0)), (Csd(0x00100201),))
    assert request(ServerAddress.single("000000000000"), 0, encode_request(req)) == R5_REQ
    resp = parse_response(frame_of(R5_REP).apdu)
    assert isinstance(resp, GetResponseRecord)
    assert resp.record.oad == 0x50040200 and resp.record.rcsd == (Csd(0x00100201),)
    assert isinstance(resp.record.rows, tuple)
    ((value,),) = resp.record.rows
    assert BY_NAME["energy_import_kwh"].value(value) == Decimal("1234.56")


def test_r6_last_power_down_event() -> None:
    req = GetRecord(0, 0x30110200, SelectLast(1), (Csd(EVENT_START_OAD), Csd(EVENT_END_OAD)))
    assert request(ServerAddress.single("000000000002"), 0, encode_request(req)) == R6_REQ
    resp = parse_response(frame_of(R6_REP).apdu)
    assert isinstance(resp, GetResponseRecord) and isinstance(resp.record.rows, tuple)
    (row,) = resp.record.rows
    event = event_record(dict(zip((EVENT_START_OAD, EVENT_END_OAD), row, strict=True)))
    assert (event.start, event.end) == ("2017-02-02T03:02:17", "2017-02-02T04:02:04")


def test_r7_latest_day_freeze_request() -> None:
    req = GetRecord(2, 0x50040200, SelectLast(1), (Csd(0x20210200), Csd(0x00100200), Csd(0x00200200)))
    assert request(ServerAddress.single("201507210143"), 0x02, encode_request(req)) == R7_REQ1


def test_r7_secured_minute_freeze_window_request() -> None:
    inner = GetRecord(
        0, 0x50020200,
        SelectRange(0x20210200, date_time_s(datetime(2019, 1, 11, 0, 30)),
                    date_time_s(datetime(2019, 1, 11, 0, 44, 59)), Data(DataType.TI, Ti(1, 15))),
        tuple(Csd(o) for o in (0x00000200, 0x00100200, 0x00200200, 0x00300200, 0x20210200)),
    )
    rn = h("DB E8 74 E8 68 E2 81 80 62 D5 7A 78 09 72 0F 39")
    apdu = wrap_security_plain(encode_request(inner), rn)
    assert request(ServerAddress.single("000000000004"), 0, apdu) == R7_REQ2
    opened = unwrap_security(frame_of(R7_REQ2).apdu)
    assert opened.apdu is not None and parse_request(opened.apdu) == inner
    assert opened.check == b"\x01\x10" + rn


def test_r8_single_phase_voltages() -> None:
    rep = frame_of(R8_REP)
    assert rep.server.text == "012503200001"
    resp = parse_response(rep.apdu)
    assert isinstance(resp, GetResponseNormal) and resp.oad == 0x20000200 and isinstance(resp.result, Data)
    volts = [BY_NAME[f"voltage_v_l{k}"].value(resp.result.items[k - 1]) for k in (1, 2, 3)]
    assert volts == [Decimal("224.1"), Decimal("0.0"), Decimal("0.0")]
