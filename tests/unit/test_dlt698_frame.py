"""DL/T 698.45 link frames: CRC, length field and its unit bit, control and address fields,
scrambling, fragments, and each recovery case drawn in ``drivers/dlt698/frame.py``."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.dlt698.frame import (
    C_REQUEST,
    C_RESPONSE,
    SC,
    AddressType,
    Fragment,
    FragmentKind,
    Frame,
    Reassembly,
    ServerAddress,
    crc16,
    decode,
    encode_frame,
    encode_length,
    fragment_ack,
    parse_length,
    scan,
    split_apdu,
)
from gateway.errors import ConfigError, FrameError

METER = ServerAddress.single("000039200933")
GET_TOTAL = bytes.fromhex("05 01 00 00 10 02 00 00")


def frame(apdu: bytes = GET_TOTAL, control: int = C_REQUEST, server: ServerAddress = METER,
          client: int = 0) -> bytes:
    return encode_frame(control, server, client, apdu)


def test_crc_is_x25_with_its_check_value() -> None:
    assert crc16(b"123456789") == 0x906E
    assert crc16(b"") == 0x0000


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(min_size=1, max_size=16), st.integers(0, 255), st.integers(0, 3))
def test_fcs_depends_only_on_the_apdu_when_the_hcs_is_right(sa: bytes, ca: int, kind: int) -> None:
    # CRC residue: HCS sits inside the FCS coverage (docs/protocols/dlt698-45.md §2), so FCS never catches
    # a header error that HCS missed: every such request ends D5 1D 16.
    wire = encode_frame(C_REQUEST, ServerAddress(AddressType(kind), sa), ca, GET_TOTAL)
    assert wire.endswith(bytes.fromhex("D5 1D 16"))


def test_length_field_counts_bytes_between_68_and_16() -> None:
    wire = frame()
    assert int.from_bytes(wire[1:3], "little") == len(wire) - 2
    assert encode_length(0x3FFF) == b"\xff\x3f"
    with pytest.raises(ValueError):
        encode_length(0x4000)
    assert parse_length(0x4017) == (0x17, True)
    assert parse_length(0x0017) == (0x17, False)


def with_length(wire: bytes, raw: int) -> bytes:
    """Set L to ``raw`` and recompute HCS and FCS, so only the length field is odd."""
    n = (wire[4] & 0x0F) + 1
    body = bytearray(wire[1:-1])
    body[0:2] = raw.to_bytes(2, "little")
    body[5 + n : 7 + n] = crc16(body[: 5 + n]).to_bytes(2, "little")
    body[-2:] = crc16(body[:-2]).to_bytes(2, "little")
    return b"\x68" + bytes(body) + b"\x16"


def test_length_in_kilobytes_is_rejected_with_its_own_reason() -> None:
    wire = frame()
    odd = with_length(wire, int.from_bytes(wire[1:3], "little") | 0x4000)
    result = scan(odd)
    assert result.frame is None
    assert any("kilobytes" in r for r in result.rejected)
    assert result.used == len(odd)


def test_reserved_length_bit_and_too_short_lengths_are_rejected() -> None:
    wire = frame()
    for raw, words in ((int.from_bytes(wire[1:3], "little") | 0x8000, "reserved"), (14, "shorter")):
        result = scan(with_length(wire, raw))
        assert result.frame is None
        assert any(words in r for r in result.rejected), result.rejected


def test_control_field_bits() -> None:
    f = Frame(0xC3 | SC, METER, 0, b"")
    assert f.from_server and f.prm and f.scrambled and not f.split and f.function == 3
    assert not Frame(C_REQUEST, METER, 0, b"").from_server


def test_address_types_and_af_byte() -> None:
    assert METER.af == 0x05 and METER.wire == bytes.fromhex("33 09 20 39 00 00")
    assert ServerAddress.wildcard().af == 0x45
    assert ServerAddress.broadcast().af == 0xC0 and ServerAddress.broadcast().wire == b"\xaa"
    assert ServerAddress(AddressType.GROUP, b"\x01\x02").af == 0x81
    assert ServerAddress.single("39200933").text == "000039200933"
    assert ServerAddress.single("1", logical=1).af == 0x15
    with pytest.raises(ConfigError, match="wildcard digit"):
        ServerAddress.single("0000392009AA")
    with pytest.raises(ConfigError, match="nameplate"):
        ServerAddress.single("12-34")


def test_which_addresses_reach_a_meter() -> None:
    assert ServerAddress.wildcard().reaches(METER)
    assert ServerAddress.wildcard("AAAA39200933").reaches(METER)
    assert not ServerAddress.wildcard("AAAA39200934").reaches(METER)
    assert not ServerAddress(AddressType.WILDCARD, b"\xaa" * 4).reaches(METER)   # other length
    assert ServerAddress.broadcast().reaches(METER)
    assert ServerAddress.single("000039200933").reaches(METER)
    assert not ServerAddress.single("000039200933", logical=1).reaches(METER)
    assert not ServerAddress(AddressType.GROUP, METER.wire).reaches(METER)


def test_fe_prefix_is_not_covered_by_either_check() -> None:
    for pre in range(5):
        wire = encode_frame(C_REQUEST, METER, 0, GET_TOTAL, preamble=pre)
        assert wire[:pre] == b"\xfe" * pre and wire[pre:] == frame()
        assert decode(wire) == (len(wire), Frame(C_REQUEST, METER, 0, GET_TOTAL))
    with pytest.raises(ValueError):
        encode_frame(C_REQUEST, METER, 0, GET_TOTAL, preamble=5)


def test_scrambled_user_data_travels_plus_33_and_decodes_back() -> None:
    wire = frame(control=C_REQUEST | SC)
    assert wire[14:-3] == bytes((b + 0x33) & 0xFF for b in GET_TOTAL)
    got = scan(wire).frame
    assert got is not None and got.scrambled and got.apdu == GET_TOTAL


def test_split_apdu_is_reassembled_from_its_fragments() -> None:
    apdu = bytes(range(256)) * 3
    pieces = split_apdu(apdu, 100)
    assert [p[0].kind for p in pieces] == [FragmentKind.FIRST] + [FragmentKind.MIDDLE] * 6 + [FragmentKind.LAST]
    assert split_apdu(apdu, len(apdu)) == []
    stream = b"".join(encode_frame(C_RESPONSE, METER, 0, piece, fragment=frag) for frag, piece in pieces)
    joined = Reassembly()
    out = None
    while stream:
        used, f = decode(stream)
        stream = stream[used:]
        assert f is not None and f.split and f.fragment is not None
        ack = scan(fragment_ack(f)).frame
        assert ack is not None and ack.fragment == Fragment(f.fragment.number, FragmentKind.ACK)
        assert not ack.from_server and ack.apdu == b""
        out = joined.add(f)
    assert out == apdu


def test_fragments_out_of_order_are_refused() -> None:
    pieces = split_apdu(b"x" * 30, 10)
    frames = [Frame(C_RESPONSE, METER, 0, p, frag) for frag, p in pieces]
    with pytest.raises(FrameError, match="before the first"):
        Reassembly().add(frames[1])
    r = Reassembly()
    r.add(frames[0])
    with pytest.raises(FrameError, match="expected"):
        r.add(frames[2])
    with pytest.raises(FrameError):
        Reassembly().add(Frame(C_RESPONSE, METER, 0, b"x"))


def test_split_frame_without_fragment_header_is_rejected() -> None:
    wire = encode_frame(C_RESPONSE, METER, 0, b"", fragment=Fragment(0, FragmentKind.ACK))
    # Cut the fragment header away by rebuilding L, HCS and FCS around an empty user data.
    body = bytearray(wire[1:-1])
    del body[13:15]
    body[0:2] = (len(body)).to_bytes(2, "little")
    body[11:13] = crc16(body[:11]).to_bytes(2, "little")
    body[-2:] = crc16(body[:-2]).to_bytes(2, "little")
    result = scan(b"\x68" + bytes(body) + b"\x16")
    assert result.frame is None and any("fragment header" in r for r in result.rejected)


# --- recovery cases (module docstring of frame.py) -------------------------------------------


def test_garbage_before_68_is_skipped() -> None:
    wire = frame()
    assert decode(b"\x01\x02\xfe\xfe" + wire) == (4 + len(wire), scan(wire).frame)


def test_header_not_in_yet_waits_keeping_the_68() -> None:
    wire = frame()
    for cut in range(1, 14):
        assert decode(b"\x00\x00" + wire[:cut]) == (2, None)


def test_bad_hcs_is_rejected_before_the_whole_frame_arrives() -> None:
    wire = bytearray(frame())
    wire[12] ^= 0x01
    result = scan(bytes(wire[:15]))          # header + HCS only
    assert result.frame is None and any("HCS" in r for r in result.rejected)


def test_bad_fcs_and_bad_end_byte_are_rejected_then_resync() -> None:
    good = frame()
    bad_fcs = bytearray(good)
    bad_fcs[-3] ^= 0xFF
    bad_end = bytearray(good)
    bad_end[-1] = 0x5A
    for broken, words in ((bad_fcs, "FCS"), (bad_end, "end byte")):
        result = scan(bytes(broken) + good)
        assert result.frame == scan(good).frame
        assert result.used == len(broken) + len(good)
        assert any(words in r for r in result.rejected)


def test_a_cut_frame_followed_by_a_complete_one_yields_the_complete_one() -> None:
    long_reply = encode_frame(C_RESPONSE, METER, 0, b"\x85" + bytes(900))
    good = frame()
    result = scan(long_reply[:40] + good)
    assert result.frame == scan(good).frame
    assert any("incomplete" in r for r in result.rejected)


def test_no_68_at_all_is_all_garbage() -> None:
    assert decode(b"\x00\x16\xfe" * 10) == (30, None)
