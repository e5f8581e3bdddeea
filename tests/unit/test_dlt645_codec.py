"""DL/T 645 codec against the golden frames of ``drivers/dlt645/vectors.txt``.

Every frame in the file must decode to its stated meaning and be rebuilt byte for byte by
our encoders; request frames are also compared with the independent ``dlt645`` package's
``build_frame`` (given the wire-order address, which it handles correctly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from dlt645.protocol.protocol import DLT645Protocol

import drivers.dlt645
from drivers.dlt645.codec import (
    BROADCAST,
    WILDCARD,
    Frame,
    Request,
    address_matches,
    address_to_wire,
    check_reply,
    decode,
    encode_frame,
    encode_read,
    error_name,
    followup_request,
    normalize_address,
    read_address_request,
    read_request,
    scan,
    time_sync_request,
    wire_to_address,
)
from drivers.dlt645.values import decode_value, encode_value
from gateway.errors import ConfigError, DeviceException, FrameError, WrongAddressError

VECTORS = Path(drivers.dlt645.__file__).resolve().parent / "vectors.txt"
M = "123456789012"


@dataclass(frozen=True)
class Vector:
    id: str
    direction: str
    wire: bytes
    meaning: str


def load_vectors() -> list[Vector]:
    out = []
    for raw in VECTORS.read_text(encoding="utf-8").splitlines():
        if not raw.strip() or raw.startswith("#"):
            continue
        vid, direction, hexbytes, meaning, _source = (p.strip() for p in raw.split("|", 4))
        out.append(Vector(vid, direction, bytes.fromhex(hexbytes), meaning))
    return out


ALL = load_vectors()


@dataclass(frozen=True)
class Meaning:
    """What a golden frame means, and how our encoder rebuilds it."""

    address: str
    control: int
    data: bytes                       # DATA after −0x33
    build: Callable[[], bytes]
    value: object = None              # decoded value of the payload, if any
    fmt: str | None = None
    di_width: int = 4


def _di(di: int, width: int = 4) -> bytes:
    return di.to_bytes(width, "little")


def _reply(addr: str, control: int, data: bytes) -> Callable[[], bytes]:
    return lambda: encode_frame(address_to_wire(addr), control, data, preamble=0)


def _req(addr: str, di: int, pre: int = 4, **kw: object) -> Callable[[], bytes]:
    return lambda: encode_read(addr, di, preamble=pre, **kw)  # type: ignore[arg-type]


EXPECTED: dict[tuple[str, str], Meaning] = {
    ("V1", "req"): Meaning("AAAAAAAAAAAA", 0x13, b"", lambda: read_address_request().encode(4)),
    ("V1", "rsp"): Meaning("000000000001", 0x93, bytes.fromhex("010000000000"),
                           _reply("000000000001", 0x93, bytes.fromhex("010000000000"))),
    ("V2", "req"): Meaning(M, 0x11, _di(0x00010000), _req(M, 0x00010000, 0)),
    ("V2", "rsp"): Meaning(M, 0x91, _di(0x00010000) + bytes.fromhex("78563412"),
                           _reply(M, 0x91, _di(0x00010000) + encode_value(Decimal("123456.78"), "XXXXXX.XX")),
                           Decimal("123456.78"), "XXXXXX.XX"),
    ("V4", "req"): Meaning("652022122003", 0x11, _di(0), _req("652022122003", 0, 0)),
    ("V4", "rsp"): Meaning("652022122003", 0x91, _di(0) + bytes(4),
                           _reply("652022122003", 0x91, _di(0) + encode_value(Decimal("0.00"), "XXXXXX.XX")),
                           Decimal("0.00"), "XXXXXX.XX"),
    ("V6", "req"): Meaning("002241020208", 0x11, _di(0x04000402), _req("002241020208", 0x04000402)),
    ("V6", "rsp"): Meaning("002241020208", 0x91, _di(0x04000402) + bytes.fromhex("080202412200"),
                           _reply("002241020208", 0x91,
                                  _di(0x04000402) + encode_value("002241020208", "NNNNNNNNNNNN")),
                           "002241020208", "NNNNNNNNNNNN"),
    ("V6b", "rsp"): Meaning("002241020208", 0x93, bytes.fromhex("080202412200"),
                            _reply("002241020208", 0x93, address_to_wire("002241020208"))),
    ("V10a", "req"): Meaning("001234567890", 0x11, _di(0), _req("001234567890", 0, 0)),
    ("V10b", "req"): Meaning("000012345678", 0x11, _di(0x02010100), _req("000012345678", 0x02010100, 0)),
    ("V11", "req"): Meaning("000000000003", 0x01, _di(0xB611, 2),
                            _req("000000000003", 0xB611, 0, protocol="dlt645-1997")),
    ("V11", "rsp"): Meaning("000000000003", 0x81, _di(0xB611, 2) + bytes.fromhex("0001"),
                            _reply("000000000003", 0x81, _di(0xB611, 2) + encode_value(100, "XXX")),
                            Decimal(100), "XXX", di_width=2),
    ("V12", "rsp"): Meaning(M, 0xD1, b"\x02", _reply(M, 0xD1, b"\x02")),
    ("V14", "req"): Meaning("AAAAAAAAAAAA", 0x11, bytes.fromhex("DBDFDF04DB08DFDB"),
                            lambda: encode_frame(WILDCARD, 0x11, bytes.fromhex("DBDFDF04DB08DFDB"))),
    ("D01", "req"): Meaning(M, 0x11, _di(0x00000000), _req(M, 0x00000000)),
    ("D02", "req"): Meaning(M, 0x11, _di(0x0001FF00), _req(M, 0x0001FF00)),
    ("D03", "req"): Meaning(M, 0x11, _di(0x0001FF01), _req(M, 0x0001FF01)),
    ("D04", "req"): Meaning(M, 0x11, _di(0x0002FF00), _req(M, 0x0002FF00)),
    ("D05", "req"): Meaning(M, 0x11, _di(0x0101FF00), _req(M, 0x0101FF00)),
    ("D06", "req"): Meaning(M, 0x11, _di(0x0201FF00), _req(M, 0x0201FF00)),
    ("D07", "req"): Meaning(M, 0x11, _di(0x0202FF00), _req(M, 0x0202FF00)),
    ("D08", "req"): Meaning(M, 0x11, _di(0x0203FF00), _req(M, 0x0203FF00)),
    ("D09", "req"): Meaning(M, 0x11, _di(0x0206FF00), _req(M, 0x0206FF00)),
    ("D10", "req"): Meaning(M, 0x11, _di(0x02800002), _req(M, 0x02800002)),
    ("D11", "req"): Meaning(M, 0x11, _di(0x04000101), _req(M, 0x04000101)),
    ("D12", "req"): Meaning(M, 0x11, _di(0x04000102), _req(M, 0x04000102)),
    ("D13", "req"): Meaning(M, 0x11, _di(0x04000B01), _req(M, 0x04000B01)),
    ("D14", "req"): Meaning(M, 0x11, _di(0x05060001), _req(M, 0x05060001)),
    ("D15", "req"): Meaning(M, 0x11, _di(0x05060101), _req(M, 0x05060101)),
    ("D16", "req"): Meaning(M, 0x11, _di(0x03300D00), _req(M, 0x03300D00)),
    ("D17", "req"): Meaning(M, 0x11, _di(0x06000001) + bytes.fromhex("010000010524"),
                            _req(M, 0x06000001, extra=bytes.fromhex("010000010524"))),
    ("D18", "bcast"): Meaning("999999999999", 0x08, bytes.fromhex("300000010524"),
                              lambda: time_sync_request(datetime(2024, 5, 1, 0, 0, 30)).encode(4)),
    ("D19", "req"): Meaning(M, 0x12, _di(0x06000001) + b"\x01",
                            lambda: followup_request(M, 0x06000001, 1).encode(4)),
}


def test_every_vector_in_the_file_has_an_expected_meaning() -> None:
    assert len(ALL) >= 30
    assert {(v.id, v.direction) for v in ALL} == set(EXPECTED)


@pytest.mark.parametrize("vec", ALL, ids=[f"{v.id}-{v.direction}" for v in ALL])
def test_vector_decodes_to_its_meaning(vec: Vector) -> None:
    exp = EXPECTED[(vec.id, vec.direction)]
    used, frame = decode(vec.wire)
    assert frame is not None
    assert used == len(vec.wire)
    assert frame.addr == exp.address
    assert frame.control == exp.control
    assert frame.data == exp.data
    assert frame.is_reply == (vec.direction == "rsp")
    if exp.value is not None:
        assert exp.fmt is not None
        assert decode_value(frame.data[exp.di_width:], exp.fmt) == exp.value


@pytest.mark.parametrize("vec", ALL, ids=[f"{v.id}-{v.direction}" for v in ALL])
def test_vector_encodes_to_the_exact_bytes(vec: Vector) -> None:
    assert EXPECTED[(vec.id, vec.direction)].build() == vec.wire


@pytest.mark.parametrize("vec", ALL, ids=[f"{v.id}-{v.direction}" for v in ALL])
def test_encoder_agrees_with_the_dlt645_package(vec: Vector) -> None:
    exp = EXPECTED[(vec.id, vec.direction)]
    preamble = len(vec.wire) - len(vec.wire.lstrip(b"\xfe"))
    theirs = bytes(DLT645Protocol.build_frame(address_to_wire(exp.address), exp.control, exp.data,
                                              preamble_count=preamble))
    ours = encode_frame(address_to_wire(exp.address), exp.control, exp.data, preamble=preamble)
    assert ours == theirs == vec.wire


def test_v2_reply_checks_against_its_request() -> None:
    req = read_request(M, 0x00010000)
    _, frame = decode(next(v.wire for v in ALL if (v.id, v.direction) == ("V2", "rsp")))
    assert frame is not None
    reply = check_reply(req, frame)
    assert decode_value(reply.payload, "XXXXXX.XX") == Decimal("123456.78")
    assert not reply.more


def test_v12_abnormal_reply_raises_a_named_device_exception() -> None:
    _, frame = decode(next(v.wire for v in ALL if v.id == "V12"))
    assert frame is not None and frame.is_abnormal
    with pytest.raises(DeviceException) as info:
        check_reply(read_request(M, 0x0001FF00), frame)
    assert info.value.code == 0x02
    assert info.value.name == "no requested data"
    assert "0001FF00" in str(info.value) and M in str(info.value)


def test_v11_1997_reply_checks_with_a_two_byte_di() -> None:
    req = read_request("3", 0xB611, protocol="dlt645-1997")
    _, frame = decode(next(v.wire for v in ALL if (v.id, v.direction) == ("V11", "rsp")))
    assert frame is not None
    assert decode_value(check_reply(req, frame).payload, "XXX") == Decimal(100)


def test_v1_wildcard_request_accepts_any_address() -> None:
    _, frame = decode(next(v.wire for v in ALL if (v.id, v.direction) == ("V1", "rsp")))
    assert frame is not None
    reply = check_reply(read_address_request(), frame)
    assert wire_to_address(reply.payload) == "000000000001"


# --- validation ---------------------------------------------------------------------------------


def _reply_frame(addr: str, control: int, data: bytes) -> Frame:
    _, f = decode(encode_frame(address_to_wire(addr), control, data, preamble=0))
    assert f is not None
    return f


def test_reply_from_another_address_is_wrong_address() -> None:
    f = _reply_frame("000000000009", 0x91, _di(0x00010000) + bytes(4))
    with pytest.raises(WrongAddressError, match="000000000009"):
        check_reply(read_request(M, 0x00010000), f)


def test_reply_for_another_di_is_a_frame_error() -> None:
    f = _reply_frame(M, 0x91, _di(0x00020000) + bytes(4))
    with pytest.raises(FrameError, match="00020000"):
        check_reply(read_request(M, 0x00010000), f)


def test_a_request_frame_is_not_a_reply() -> None:
    _, f = decode(encode_read(M, 0x00010000))
    assert f is not None
    with pytest.raises(FrameError, match="master-to-meter"):
        check_reply(read_request(M, 0x00010000), f)


def test_follow_up_reply_must_carry_the_asked_seq() -> None:
    req = followup_request(M, 0x06000001, 2)
    good = check_reply(req, _reply_frame(M, 0x92, _di(0x06000001) + b"\x10\x20" + b"\x02"))
    assert good.payload == b"\x10\x20" and not good.more
    more = check_reply(req, _reply_frame(M, 0xB2, _di(0x06000001) + b"\x10" + b"\x02"))
    assert more.more
    with pytest.raises(FrameError, match="follow-up"):
        check_reply(req, _reply_frame(M, 0x92, _di(0x06000001) + b"\x10" + b"\x03"))


def test_abbreviated_address_matches_on_low_bytes() -> None:
    assert address_matches(bytes.fromhex("785634AAAAAA"), address_to_wire("999999345678"))
    assert not address_matches(bytes.fromhex("785634AAAAAA"), address_to_wire("999999345679"))
    assert address_matches(BROADCAST, address_to_wire(M))


def test_error_byte_names() -> None:
    assert error_name(0x02) == "no requested data"
    assert error_name(0x05) == "other error + wrong password or not authorised"
    assert error_name(0) == "unspecified error"


def test_addresses_normalise_and_reject_garbage() -> None:
    assert normalize_address("1") == "000000000001"
    assert address_to_wire(M) == bytes.fromhex("129078563412")
    for bad in ("", "1234567890123", "12345G", "12-34"):
        with pytest.raises(ConfigError, match="12-digit"):
            normalize_address(bad)


def test_request_without_reply_is_broadcast() -> None:
    assert not time_sync_request(datetime(2024, 5, 1)).expects_reply
    assert read_request(M, 0x00010000).expects_reply
    assert isinstance(read_address_request(), Request)


# --- streaming decoder recovery cases (the module docstring's table) ----------------------------

V2RSP = next(v.wire for v in ALL if (v.id, v.direction) == ("V2", "rsp"))


def test_fe_and_garbage_before_a_frame_are_skipped() -> None:
    buf = b"\xfe\xfe\x3a\x00\x16" + V2RSP + b"\x99"
    used, frame = decode(buf)
    assert frame is not None and frame.addr == M
    assert buf[used:] == b"\x99"


def test_partial_frame_means_wait_and_drops_only_the_garbage() -> None:
    buf = b"\x01\x02" + V2RSP[:9]
    used, frame = decode(buf)
    assert frame is None and used == 2
    used2, frame2 = decode(buf[used:] + V2RSP[9:])
    assert frame2 is not None and used2 == len(V2RSP)


def test_bad_checksum_is_reported_and_the_next_frame_found() -> None:
    bad = bytearray(V2RSP)
    bad[-2] ^= 0x01
    result = scan(bytes(bad) + V2RSP)
    assert result.frame is not None and result.used == 2 * len(V2RSP)
    assert any("checksum" in r for r in result.rejected)


def test_bad_end_byte_resynchronises() -> None:
    bad = bytearray(V2RSP)
    bad[-1] = 0x5A
    result = scan(bytes(bad))
    assert result.frame is None and result.used == len(bad)
    assert any("end byte" in r for r in result.rejected)


def test_second_start_byte_out_of_place_is_noise() -> None:
    buf = b"\x68\x01\x02\x03\x04\x05\x06\x7f\x00" + V2RSP
    used, frame = decode(buf)
    assert frame is not None and used == len(buf)


def test_impossible_length_resynchronises() -> None:
    fake = bytes([0x68, 1, 2, 3, 4, 5, 6, 0x68, 0x91, 230])
    result = scan(fake + V2RSP)
    assert result.frame is not None and any("L=230" in r for r in result.rejected)


def test_incomplete_header_before_a_complete_frame_is_skipped() -> None:
    fake = bytes([0x68, 1, 2, 3, 4, 5, 6, 0x68, 0x91, 180])  # claims 192 bytes
    used, frame = decode(fake + V2RSP)
    assert frame is not None and frame.addr == M and used == len(fake) + len(V2RSP)


def test_no_start_byte_means_everything_is_garbage() -> None:
    assert decode(b"\xfe\xfe\x00\x16") == (4, None)
    assert decode(b"") == (0, None)
