"""Fuzzing the DL/T 645 streaming decoder and reply validation (hypothesis).

Properties: the decoder never raises and never consumes more than it was given; a valid
frame surrounded by noise is still found, whole, whichever way the stream is chunked; a
truncated frame means "need more"; a corrupted checksum is rejected and reported; the
validating layer raises only the codec's own error types.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.dlt645.codec import (
    MAX_DATA_LEN,
    check_reply,
    decode,
    encode_frame,
    read_request,
    scan,
)
from gateway.errors import AmrError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

addresses = st.binary(min_size=6, max_size=6)
controls = st.integers(min_value=0, max_value=0xFF)
payloads = st.binary(max_size=MAX_DATA_LEN)
noise = st.binary(max_size=60)


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, bytes, int, bytes]:
    """(wire bytes, address, control, data) of a valid frame with 0..4 FE."""
    address, control, data = draw(addresses), draw(controls), draw(payloads)
    pre = draw(st.integers(min_value=0, max_value=4))
    return encode_frame(address, control, data, preamble=pre), address, control, data


def drain(stream: bytes, chunks: list[int]) -> list[tuple[bytes, int, bytes]]:
    """Feed ``stream`` in chunks as a receiver would; return every frame found."""
    buf = bytearray()
    found = []
    pos = 0
    sizes = [*chunks, len(stream)]
    for size in sizes:
        buf += stream[pos : pos + max(1, size)]
        pos += max(1, size)
        for _ in range(len(buf) + 1):
            used, frame = decode(buf)
            assert 0 <= used <= len(buf)
            del buf[:used]
            if frame is None:
                break
            found.append((frame.address, frame.control, frame.data))
        if pos >= len(stream):
            break
    return found


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = scan(data)
    assert 0 <= result.used <= len(data)
    if result.frame is not None:
        f = result.frame
        assert len(f.data) <= MAX_DATA_LEN
        # A frame found in random bytes really is a valid frame ending where ``used`` says.
        assert data[: result.used].endswith(encode_frame(f.address, f.control, f.data, preamble=0))


@FUZZ
@given(frames(), noise, noise, st.lists(st.integers(min_value=1, max_value=40), max_size=12))
def test_valid_frame_in_noise_is_found(frame: tuple[bytes, bytes, int, bytes], before: bytes,
                                       after: bytes, chunks: list[int]) -> None:
    wire, address, control, data = frame
    found = drain(before + wire + after, chunks)
    assert (address, control, data) in found


@FUZZ
@given(frames(), st.data())
def test_truncated_frame_means_need_more(frame: tuple[bytes, bytes, int, bytes], data: st.DataObject) -> None:
    wire = frame[0]
    cut = data.draw(st.integers(min_value=0, max_value=len(wire) - 1))
    used, found = decode(wire[:cut])
    assert found is None
    # Nothing of the frame proper (from its first 68) has been dropped.
    start = wire.index(0x68)
    assert used <= start
    _, found2 = decode(wire[used:])
    assert found2 is not None and found2.data == frame[3]


@FUZZ
@given(frames(), st.integers(min_value=1, max_value=255), frames())
def test_corrupted_checksum_is_rejected_and_next_frame_found(
    frame: tuple[bytes, bytes, int, bytes], delta: int, nxt: tuple[bytes, bytes, int, bytes]
) -> None:
    bad = bytearray(frame[0])
    bad[-2] = (bad[-2] + delta) & 0xFF
    alone = scan(bytes(bad))
    assert alone.frame is None or alone.frame.data != frame[3] or alone.frame.address != frame[1]
    found = drain(bytes(bad) + nxt[0], [])
    assert (nxt[1], nxt[2], nxt[3]) in found


@FUZZ
@given(frames(), st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_validation_raises_only_codec_errors(frame: tuple[bytes, bytes, int, bytes], di: int) -> None:
    _, f = decode(frame[0])
    assert f is not None
    try:
        reply = check_reply(read_request("123456789012", di), f)
    except AmrError:
        return
    assert reply.frame is f
