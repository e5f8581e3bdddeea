"""The pure parts of the DL/T 698.45 driver: the reply matcher, the read plan, the profile.

The matcher is fed what a line can carry (noise, our own echo, other meters' replies, late
replies with an old PIID, corrupted frames) around the right reply, chunked at random
(hypothesis): it never takes a foreign frame, it finds the reply whole, and when only
foreign or damaged bytes came its silence error says which.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.dlt698.apdu import GetNormal, GetResponseNormal, encode_request, encode_response
from drivers.dlt698.axdr import Data, DataType
from drivers.dlt698.catalogue import BY_NAME, CANONICAL
from drivers.dlt698.frame import C_REQUEST, C_RESPONSE, ServerAddress, encode_frame, scan
from drivers.dlt698.matching import Dlt698Matcher
from drivers.dlt698.plan import MAX_OADS, compile_plan
from drivers.transport.pipe import Cut
from gateway.errors import ConfigError, FrameError, ReadTimeout, WrongAddressError
from gateway.profiles import load_profile

METER = ServerAddress.single("000039200933")
OTHER = ServerAddress.single("000000000002")
PROFILE = Path(__file__).resolve().parents[2] / "drivers" / "dlt698" / "profiles" / "dlt698-3phase.yaml"


def reply(server: ServerAddress = METER, piid: int = 5, client: int = 0, value: int = 699) -> bytes:
    apdu = encode_response(GetResponseNormal(piid, 0x00100201, Data(DataType.DOUBLE_LONG_UNSIGNED, value)))
    return encode_frame(C_RESPONSE, server, client, apdu)


def request(server: ServerAddress = METER, piid: int = 5) -> bytes:
    return encode_frame(C_REQUEST, server, 0, encode_request(GetNormal(piid, 0x00100201)), preamble=4)


def matcher(server: ServerAddress = METER) -> Dlt698Matcher:
    return Dlt698Matcher(server, 0, 5, "GET 00100201", "test line")


def feed(m: Dlt698Matcher, stream: bytes, chunks: list[int]) -> bytes | None:
    """Feed ``stream`` as a pipe would (drop skipped bytes, stop at the reply)."""
    buf = bytearray()
    pos = 0
    for size in [*chunks, len(stream)]:
        buf += stream[pos : pos + max(1, size)]
        pos += max(1, size)
        for _ in range(256):
            cut: Cut = m(buf)
            if cut.status == "reply":
                return bytes(buf[cut.start : cut.end])
            if cut.status == "skip" and cut.end > 0:
                del buf[: cut.end]
                continue
            break
        if pos >= len(stream):
            break
    return None


def test_the_reply_is_found_after_echo_and_foreign_and_late_replies() -> None:
    m = matcher()
    stream = (b"\xfe\xfe" + request() + reply(OTHER) + reply(piid=4, value=1) + b"\x00\x33" + reply(value=2))
    got = feed(m, stream, [3, 10, 50])
    assert got == reply(value=2)
    assert m.frame is not None and m.frame.server == METER
    assert len(m.skipped) == 2


def test_silence_errors_say_what_was_seen() -> None:
    m = matcher()
    assert feed(m, reply(OTHER), []) is None
    assert isinstance(m.expired(b"", 1.0), WrongAddressError)
    m = matcher()
    broken = bytearray(reply())
    broken[-3] ^= 0xFF
    assert feed(m, bytes(broken), []) is None
    err = m.expired(b"", 1.0)
    assert isinstance(err, FrameError) and "corrupted" in str(err)
    m = matcher()
    assert feed(m, reply()[:10], []) is None
    err = m.expired(reply()[:10], 1.0)
    assert isinstance(err, ReadTimeout) and "10 bytes of an incomplete reply" in str(err)


def test_a_wildcard_request_takes_any_single_meters_reply() -> None:
    m = matcher(ServerAddress.wildcard())
    assert feed(m, reply(OTHER), []) == reply(OTHER)


FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
junk = st.one_of(
    st.binary(max_size=40),
    st.just(request()),
    st.builds(lambda v: reply(OTHER, value=v), st.integers(0, 1000)),
    st.builds(lambda p: reply(piid=p), st.integers(0, 63).filter(lambda p: p != 5)),
    st.builds(lambda c: reply(client=c), st.integers(1, 255)),
)


@FUZZ
@given(st.lists(junk, max_size=5), st.binary(max_size=30), st.lists(st.integers(1, 40), max_size=10))
def test_only_the_right_reply_is_ever_taken(before: list[bytes], after: bytes, chunks: list[int]) -> None:
    m = matcher()
    got = feed(m, b"".join(before) + reply(value=777) + after, chunks)
    # Random junk can hold a valid frame only by re-encoding one; the matcher still checks it.
    assert got is not None
    f = scan(got).frame
    assert f is not None and f.server == METER and f.apdu[2] & 0x3F == 5


@FUZZ
@given(st.lists(junk, max_size=6), st.lists(st.integers(1, 40), max_size=10))
def test_foreign_bytes_alone_never_make_a_reply(before: list[bytes], chunks: list[int]) -> None:
    m = matcher()
    got = feed(m, b"".join(before), chunks)
    if got is not None:                       # only possible if the random bytes built our reply
        f = scan(got).frame
        assert f is not None and f.server == METER and f.apdu[2] & 0x3F == 5 and f.client == 0
    else:
        assert isinstance(m.expired(b"", 0.5), ReadTimeout | FrameError)


# --- plan and profile ---------------------------------------------------------------------------


def test_plan_batches_distinct_oads() -> None:
    plan = compile_plan(CANONICAL)
    oads = [o for b in plan.batches for o in b]
    assert len(oads) == len(set(oads)) == len({p.oad for p in CANONICAL})
    assert all(len(b) <= MAX_OADS for b in plan.batches)
    assert plan.request_count == -(-len(oads) // MAX_OADS)
    assert compile_plan([BY_NAME["demand_max_kw"], BY_NAME["demand_max_kw_at"]]).batches == ((0x10100201,),)
    with pytest.raises(ConfigError):
        compile_plan([])


def test_the_shipped_profile_equals_the_catalogue() -> None:
    profile = load_profile(PROFILE)
    assert profile.protocol == "dlt698"
    for name, point in profile.points.items():
        ref = BY_NAME[name]
        assert (point.oad, point.field, point.exponent, point.unit, point.side, point.types) == (
            ref.oad, ref.field, ref.exponent, ref.unit, ref.side, ref.types), name
    names = set(profile.points)
    assert names == {p.name for p in CANONICAL} - {"power_kva", "event_terminal_cover_open_count"}


BROKEN = [
    ('energy_import_kwh: {oad: 00100201, scaler: -2}',
     'point energy_import_kwh: oad must be a quoted OAD of 8 hex digits such as "00100201", not "00100201" '
     "(unquoted, YAML may read it as a number)"),
    ('energy_import_kwh: {oad: "0010020", scaler: -2}',
     'point energy_import_kwh: oad must be 8 hex digits (OI, attribute, index) such as "00100201", not "0010020"'),
    ('energy_import_kwh: {oad: "00100201", scaler: x}', "point energy_import_kwh: scaler"),
    ('energy_import_kwh: {oad: "00100201", di: "00010000"}', 'unknown key "di"'),
]


@pytest.mark.parametrize(("line", "message"), BROKEN)
def test_broken_dlt698_profiles_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(f"protocol: dlt698\npoints:\n  {line}\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    (issue,) = info.value.issues
    assert issue.line == 3 and message in issue.message
