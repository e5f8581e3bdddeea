"""Fuzzing the DL/T 698.45 codec (hypothesis).

Properties: the streaming decoder never raises and never consumes more than it was given; a
frame it finds in random bytes really is a valid frame; a valid frame in noise is found
whole however the stream is chunked; a cut frame means "need more"; a corrupted HCS, FCS or
length is rejected and reported; the APDU parsers and the responder raise nothing but the
codec's :class:`FrameError`; every Data re-encodes to the bytes it came from.
"""

from __future__ import annotations

from datetime import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.dlt698.apdu import (
    Csd,
    Dar,
    GetResponseNormalList,
    GetResponseRecord,
    RecordResult,
    encode_request,
    encode_response,
    parse_request,
    parse_response,
)
from drivers.dlt698.axdr import (
    INTEGER_TYPES,
    NULL,
    BitString,
    Data,
    DataType,
    DateTimeS,
    Reader,
    ScalerUnit,
    Ti,
    decode_data,
    encode_data,
)
from drivers.dlt698.frame import (
    C_REQUEST,
    C_RESPONSE,
    SC,
    AddressType,
    Reassembly,
    ServerAddress,
    crc16,
    decode,
    encode_frame,
    scan,
    split_apdu,
)
from drivers.dlt698.responder import MeterState, answer, reply_to
from gateway.errors import FrameError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

servers = st.builds(ServerAddress, st.sampled_from(list(AddressType)), st.binary(min_size=1, max_size=16),
                    st.integers(0, 3))
controls = st.sampled_from([C_REQUEST, C_RESPONSE, C_REQUEST | SC, C_RESPONSE | SC, 0x01, 0x81])
apdus = st.binary(max_size=300)
noise = st.binary(max_size=80)
Made = tuple[bytes, tuple[int, ServerAddress, int, bytes]]


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, tuple[int, ServerAddress, int, bytes]]:
    """(wire bytes with 0..4 FE, (control, server, client, apdu)) of a valid frame."""
    control, server, client, apdu = draw(controls), draw(servers), draw(st.integers(0, 255)), draw(apdus)
    pre = draw(st.integers(0, 4))
    return encode_frame(control, server, client, apdu, preamble=pre), (control, server, client, apdu)


def drain(stream: bytes, chunks: list[int]) -> list[tuple[int, ServerAddress, int, bytes]]:
    """Feed ``stream`` in chunks as a receiver would; return every frame found."""
    buf = bytearray()
    found = []
    pos = 0
    for size in [*chunks, len(stream)]:
        buf += stream[pos : pos + max(1, size)]
        pos += max(1, size)
        for _ in range(len(buf) + 1):
            used, f = decode(buf)
            assert 0 <= used <= len(buf)
            del buf[:used]
            if f is None:
                break
            found.append((f.control, f.server, f.client, f.apdu))
        if pos >= len(stream):
            break
    return found


@FUZZ
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = scan(data)
    assert 0 <= result.used <= len(data)
    if result.frame is not None:
        f = result.frame
        assert data[: result.used].endswith(encode_frame(f.control, f.server, f.client, f.apdu, fragment=f.fragment))


@FUZZ
@given(st.binary(max_size=200).map(lambda b: b"\x68" + b))
def test_bytes_after_a_68_never_raise(data: bytes) -> None:
    used, _ = decode(data)
    assert 0 <= used <= len(data)


@FUZZ
@given(frames(), noise, noise, st.lists(st.integers(1, 60), max_size=12))
def test_valid_frame_in_noise_is_found(frame: tuple[bytes, tuple[int, ServerAddress, int, bytes]],
                                       before: bytes, after: bytes, chunks: list[int]) -> None:
    wire, meaning = frame
    assert meaning in drain(before + wire + after, chunks)


@FUZZ
@given(frames(), st.data())
def test_cut_frame_waits_for_more(frame: Made, data: st.DataObject) -> None:
    wire, _ = frame
    cut = data.draw(st.integers(0, len(wire) - 1))
    used, found = decode(wire[:cut])
    assert found is None
    assert used <= cut
    start = wire.index(0x68)
    if cut > start:
        assert used == start               # keeps the 68: the rest is on its way


@FUZZ
@given(frames(), st.data())
def test_any_corrupted_byte_is_rejected(frame: Made, data: st.DataObject) -> None:
    wire, _ = frame
    start = wire.index(0x68)
    body = bytearray(wire[start:])
    i = data.draw(st.integers(1, len(body) - 1), label="byte")
    body[i] ^= data.draw(st.integers(1, 255), label="flip")
    result = scan(bytes(body))
    if result.frame is not None:
        # The only way to still find a frame: a shorter valid frame inside the corrupted one.
        assert result.frame.encode() != bytes(body)
    else:
        assert result.rejected or i <= 2 or result.used < len(body)


@FUZZ
@given(frames(), st.integers(0x4000, 0xFFFF))
def test_lengths_with_high_bits_are_rejected_even_with_good_checks(
    frame: tuple[bytes, tuple[int, ServerAddress, int, bytes]], raw: int
) -> None:
    wire, _ = frame
    body = bytearray(wire[wire.index(0x68) + 1 : -1])
    n = (body[3] & 0x0F) + 1
    body[0:2] = raw.to_bytes(2, "little")
    body[5 + n : 7 + n] = crc16(body[: 5 + n]).to_bytes(2, "little")
    body[-2:] = crc16(body[:-2]).to_bytes(2, "little")
    result = scan(b"\x68" + bytes(body) + b"\x16")
    assert result.frame is None
    assert any("bit 1" in r or "kilobytes" in r for r in result.rejected)


@FUZZ
@given(st.binary(max_size=300))
def test_apdu_parsers_raise_only_frame_error(apdu: bytes) -> None:
    try:
        req = parse_request(apdu)
    except FrameError:
        pass
    else:
        assert encode_request(req) == apdu
    try:
        resp = parse_response(apdu)
    except FrameError:
        pass
    else:
        assert apdu[0] == 0x90 or encode_response(resp) == apdu     # SECURITY-Response: opened


@FUZZ
@given(st.sampled_from([b"\x85", b"\xee", b"\x85\x01", b"\x85\x02", b"\x85\x03"]), st.binary(max_size=300))
def test_response_like_apdus_raise_only_frame_error(head: bytes, tail: bytes) -> None:
    apdu = head + tail
    try:
        resp = parse_response(apdu)
    except FrameError:
        return
    assert encode_response(resp) == apdu


# --- Data ------------------------------------------------------------------------------------


def _ints() -> st.SearchStrategy[Data]:
    def one(kind: DataType) -> st.SearchStrategy[Data]:
        size, signed = INTEGER_TYPES[kind]
        lo, hi = (-(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1) if signed else (0, (1 << (8 * size)) - 1)
        return st.integers(lo, hi).map(lambda v: Data(kind, v))
    return st.one_of(*(one(k) for k in INTEGER_TYPES))


u8 = st.integers(0, 255)
scalars = st.one_of(
    st.just(NULL),
    _ints(),
    st.booleans().map(lambda v: Data(DataType.BOOL, v)),
    st.binary(max_size=200).map(lambda v: Data(DataType.OCTET_STRING, v)),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=20).map(lambda v: Data(DataType.VISIBLE_STRING, v)),
    st.text(max_size=10).map(lambda v: Data(DataType.UTF8_STRING, v)),
    st.floats(width=32, allow_nan=False).map(lambda v: Data(DataType.FLOAT32, v)),
    st.floats(allow_nan=False).map(lambda v: Data(DataType.FLOAT64, v)),
    st.builds(DateTimeS, st.integers(0, 65535), u8, u8, u8, u8, u8).map(lambda v: Data(DataType.DATE_TIME_S, v)),
    st.builds(Ti, u8, st.integers(0, 65535)).map(lambda v: Data(DataType.TI, v)),
    st.builds(ScalerUnit, st.integers(-128, 127), u8).map(lambda v: Data(DataType.SCALER_UNIT, v)),
    st.integers(0, 40).flatmap(lambda n: st.binary(min_size=(n + 7) // 8, max_size=(n + 7) // 8).map(
        lambda b: Data(DataType.BIT_STRING, BitString(n, b)))),
)
datas = st.recursive(
    scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=6).map(lambda xs: Data(DataType.ARRAY, tuple(xs))),
        st.lists(kids, max_size=6).map(lambda xs: Data(DataType.STRUCTURE, tuple(xs))),
    ),
    max_leaves=30,
)


@FUZZ
@given(datas)
def test_data_roundtrips_exactly(d: Data) -> None:
    wire = encode_data(d)
    assert decode_data(wire) == d
    assert encode_data(decode_data(wire)) == wire


@FUZZ
@given(st.binary(max_size=200))
def test_random_data_bytes_raise_only_frame_error(data: bytes) -> None:
    try:
        d = Reader(data).data()
    except FrameError:
        return
    assert encode_data(d) == data[: len(encode_data(d))]


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    try:
        decode_data(b"\x01\x01" * 5000 + b"\x00")
    except FrameError as exc:
        assert "nested" in str(exc)
    else:
        raise AssertionError("a 5000-level array was accepted")


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.one_of(datas, st.integers(0, 255).map(Dar))), max_size=8))
def test_normal_list_responses_roundtrip(results: list[tuple[int, Data | Dar]]) -> None:
    resp = GetResponseNormalList(1, tuple(results))
    assert parse_response(encode_response(resp)) == resp


@FUZZ
@given(st.lists(datas, min_size=1, max_size=3).flatmap(
    lambda row: st.lists(st.just(tuple(row)), max_size=4).map(lambda rows: (len(row), rows))))
def test_record_responses_roundtrip(shape: tuple[int, list[tuple[Data, ...]]]) -> None:
    width, rows = shape
    rcsd = tuple(Csd(0x00100200 + k) for k in range(width))
    resp = GetResponseRecord(3, RecordResult(0x50040200, rcsd, tuple(rows)))
    assert parse_response(encode_response(resp)) == resp


# --- fragments and responder -------------------------------------------------------------------


@FUZZ
@given(st.binary(min_size=1, max_size=2000), st.integers(1, 300))
def test_fragments_reassemble_to_the_apdu(apdu: bytes, size: int) -> None:
    pieces = split_apdu(apdu, size)
    if not pieces:
        assert len(apdu) <= size
        return
    r = Reassembly()
    out = None
    meter = ServerAddress.single("1")
    for frag, piece in pieces:
        f = scan(encode_frame(C_RESPONSE, meter, 0, piece, fragment=frag)).frame
        assert f is not None and out is None
        out = r.add(f)
    assert out == apdu


STATE = MeterState(ServerAddress.single("000039200933"), datetime(2026, 12, 6, 1, 30))


@FUZZ
@given(st.binary(max_size=300))
def test_responder_answers_any_apdu_without_raising(apdu: bytes) -> None:
    reply = answer(b"\x05" + apdu, STATE)
    parsed = parse_response(reply)           # always a well-formed reply
    assert encode_response(parsed) == reply


@FUZZ
@given(st.binary(max_size=300))
def test_responder_takes_random_frames_without_raising(apdu: bytes) -> None:
    wire = encode_frame(C_REQUEST, ServerAddress.wildcard(), 7, apdu)
    reply = reply_to(wire, STATE)
    assert reply is not None
    f = scan(reply).frame
    assert f is not None and f.client == 7 and f.server == STATE.address
