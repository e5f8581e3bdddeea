"""Register images ⇄ values: known vectors, word/byte orders, errors, round trips."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.decode import decode_bytes, decode_point, encode_point
from drivers.modbus.points import RegisterPoint, RegisterType
from gateway.errors import DecodeError


def pt(kind: RegisterType, scale: str = "1", word: str = "big", byte: str = "big") -> RegisterPoint:
    return RegisterPoint(name="x", function=3, address=0, type=kind, scale=Decimal(scale),
                         word_order=word, byte_order=byte)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("point", "regs", "expected"),
    [
        (pt("f32"), [0x4366, 0x8000], Decimal("230.5")),                      # ABCD
        (pt("f32", word="little"), [0x8000, 0x4366], Decimal("230.5")),       # CDAB
        (pt("f32", byte="little"), [0x6643, 0x0080], Decimal("230.5")),       # BADC
        (pt("f32", word="little", byte="little"), [0x0080, 0x6643], Decimal("230.5")),  # DCBA
        (pt("f32"), [0x4366, 0x199A], Decimal("230.1")),                      # shortest repr
        (pt("u16", "0.1"), [2305], Decimal("230.5")),
        (pt("i16", "0.001"), [0xFFFF], Decimal("-0.001")),
        (pt("u32", "0.01"), [0x0001, 0xE240], Decimal("1234.56")),
        (pt("u32", "0.01", word="little"), [0xE240, 0x0001], Decimal("1234.56")),
        (pt("i32"), [0xFFFF, 0xFFFE], Decimal(-2)),
        (pt("u64", "0.001"), [0, 0, 0x0001, 0x86A0], Decimal("100.000")),
        (pt("i64"), [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF], Decimal(-1)),
        (pt("f64"), list(struct.unpack(">4H", struct.pack(">d", 12345.678))), Decimal("12345.678")),
        (pt("bcd16", "0.1"), [0x2305], Decimal("230.5")),
        (pt("bcd32", "0.01"), [0x0012, 0x3456], Decimal("1234.56")),
    ],
)
def test_known_register_images(point: RegisterPoint, regs: list[int], expected: Decimal) -> None:
    value = decode_point(point, regs)
    assert value == expected
    assert isinstance(value, Decimal)


def test_integer_scale_is_exact() -> None:
    value = decode_point(pt("u32", "0.01"), [0x05F5, 0xE0FF])        # 99999999
    assert str(value) == "999999.99"


@pytest.mark.parametrize("regs", [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]])
def test_nan_and_infinity_are_decode_errors(regs: list[int]) -> None:
    with pytest.raises(DecodeError, match="no value"):
        decode_point(pt("f32"), regs)


def test_bad_bcd_and_wrong_length_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="not BCD"):
        decode_point(pt("bcd16"), [0x12A4])
    with pytest.raises(DecodeError, match="needs 2 registers"):
        decode_point(pt("u32"), [1])
    with pytest.raises(DecodeError, match="needs 4 bytes"):
        decode_bytes(pt("f32"), b"\x00\x00")


def test_encode_known_image_and_truncation() -> None:
    assert encode_point(pt("f32"), Decimal("230.5")) == [0x4366, 0x8000]
    assert encode_point(pt("u32", "0.1"), Decimal("1234.56")) == [0, 12345]   # display truncates
    assert encode_point(pt("bcd32", "0.01"), Decimal("1234.56")) == [0x0012, 0x3456]
    with pytest.raises(ValueError, match="does not fit"):
        encode_point(pt("u16"), -1)


KINDS: list[RegisterType] = ["u16", "i16", "u32", "i32", "u64", "i64", "bcd16", "bcd32"]
RANGES = {"u16": (0, 2**16 - 1), "i16": (-(2**15), 2**15 - 1), "u32": (0, 2**32 - 1),
          "i32": (-(2**31), 2**31 - 1), "u64": (0, 2**64 - 1), "i64": (-(2**63), 2**63 - 1),
          "bcd16": (0, 9999), "bcd32": (0, 99999999)}


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    pick=st.integers(0, 2**64),
    scale=st.sampled_from(["1", "0.1", "0.01", "0.001", "10"]),
    word=st.sampled_from(["big", "little"]),
    byte=st.sampled_from(["big", "little"]),
)
def test_integer_round_trip(kind: RegisterType, pick: int, scale: str, word: str, byte: str) -> None:
    lo, hi = RANGES[kind]
    n = lo + pick % (hi - lo + 1)
    p = pt(kind, scale, word, byte)
    value = Decimal(n) * Decimal(scale)
    regs = encode_point(p, value)
    assert all(0 <= r <= 0xFFFF for r in regs) and len(regs) == p.width
    assert decode_point(p, regs) == value


@settings(max_examples=300, deadline=None)
@given(f=st.floats(width=32, allow_nan=False, allow_infinity=False),
       word=st.sampled_from(["big", "little"]), byte=st.sampled_from(["big", "little"]))
def test_f32_round_trip_keeps_the_float(f: float, word: str, byte: str) -> None:
    p = pt("f32", "1", word, byte)
    value = decode_point(p, encode_point(p, f))
    assert struct.pack(">f", float(value)) == struct.pack(">f", f)


@settings(max_examples=100, deadline=None)
@given(f=st.floats(allow_nan=False, allow_infinity=False))
def test_f64_round_trip_is_exact(f: float) -> None:
    p = pt("f64", word="little")
    assert float(decode_point(p, encode_point(p, f))) == f
