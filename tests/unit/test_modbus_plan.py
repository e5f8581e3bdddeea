"""Read-plan compilation: merging, gaps, limits, overlaps, wide points at a boundary."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.plan import compile_plan
from drivers.modbus.points import REGISTER_WIDTH, ModbusLimits, RegisterPoint, RegisterType
from gateway.errors import ConfigError


def pt(name: str, address: int, kind: RegisterType = "u16", function: int = 3) -> RegisterPoint:
    return RegisterPoint(name=name, function=function, address=address, type=kind)


def layout(plan_points: object) -> list[tuple[int, int, int]]:
    from drivers.modbus.plan import ReadPlan
    assert isinstance(plan_points, ReadPlan)
    return [(r.function, r.address, r.count) for r in plan_points.requests]


def test_neighbours_merge_into_one_request_with_offsets() -> None:
    plan = compile_plan([pt("b", 2, "f32"), pt("a", 0, "f32"), pt("c", 4, "u64")], ModbusLimits())
    assert layout(plan) == [(3, 0, 8)]
    offsets = {pp.point.name: pp.offset for pp in plan.requests[0].points}
    assert offsets == {"a": 0, "b": 2, "c": 4}
    assert plan.requests[0].pdu == bytes([3, 0, 0, 0, 8])
    assert plan.register_count == 8


def test_gap_fill_reads_through_small_gaps_only() -> None:
    pts = [pt("a", 0), pt("b", 11), pt("c", 40)]
    assert layout(compile_plan(pts, ModbusLimits(gap_fill=10))) == [(3, 0, 12), (3, 40, 1)]
    assert layout(compile_plan(pts, ModbusLimits(gap_fill=9))) == [(3, 0, 1), (3, 11, 1), (3, 40, 1)]
    assert layout(compile_plan(pts, ModbusLimits(gap_fill=0))) == [(3, 0, 1), (3, 11, 1), (3, 40, 1)]
    # adjacent points merge even with gap_fill 0
    assert layout(compile_plan([pt("a", 0), pt("b", 1)], ModbusLimits(gap_fill=0))) == [(3, 0, 2)]


def test_function_codes_are_separate_requests() -> None:
    plan = compile_plan([pt("a", 0, function=4), pt("b", 1, function=3)], ModbusLimits())
    assert layout(plan) == [(3, 1, 1), (4, 0, 1)]


def test_request_size_limit_and_wide_point_at_boundary() -> None:
    # 124 u16 then a u64 at 124: the u64 would end at 128 > 125 → it starts a new request.
    pts = [pt(f"r{i}", i) for i in range(124)] + [pt("big", 124, "u64")]
    plan = compile_plan(pts, ModbusLimits())
    assert layout(plan) == [(3, 0, 124), (3, 124, 4)]
    assert plan.requests[1].points[0].offset == 0
    small = compile_plan([pt("a", 0, "u32"), pt("b", 2, "u32"), pt("c", 4, "u32")],
                         ModbusLimits(max_registers_per_request=4))
    assert layout(small) == [(3, 0, 4), (3, 4, 2)]


def test_overlapping_points_share_registers() -> None:
    plan = compile_plan([pt("whole", 10, "u32"), pt("low", 11), pt("high", 10)], ModbusLimits())
    assert layout(plan) == [(3, 10, 2)]
    assert {pp.point.name: pp.offset for pp in plan.requests[0].points} == {
        "whole": 0, "high": 0, "low": 1}


def test_one_request_per_point_and_pause_are_carried() -> None:
    plan = compile_plan([pt("a", 0, "f32"), pt("b", 2, "f32")],
                        ModbusLimits(one_request_per_point=True, pause_between_requests_ms=20))
    assert layout(plan) == [(3, 0, 2), (3, 2, 2)]
    assert plan.pause_between_requests_s == pytest.approx(0.02)
    assert plan.point_names == ("a", "b")


@pytest.mark.parametrize(
    ("points", "limits", "message"),
    [
        ([pt("x", 0, function=6)], ModbusLimits(), "use 3 .holding registers. or 4"),
        ([pt("x", 65535, "u32")], ModbusLimits(), "runs past register 65535"),
        ([pt("x", 0, "u64")], ModbusLimits(max_registers_per_request=2), "raise the limit"),
        ([pt("x", 0)], ModbusLimits(max_registers_per_request=126), "between 1 and 125"),
    ],
)
def test_impossible_plans_are_config_errors(points: list[RegisterPoint], limits: ModbusLimits,
                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_plan(points, limits)


@settings(max_examples=150, deadline=None)
@given(
    spots=st.lists(st.tuples(st.integers(0, 600), st.sampled_from(sorted(REGISTER_WIDTH)),
                             st.sampled_from([3, 4])), min_size=1, max_size=40),
    maximum=st.integers(4, 125),
    gap=st.integers(0, 20),
)
def test_every_point_is_read_exactly_once_within_limits(
        spots: list[tuple[int, str, int]], maximum: int, gap: int) -> None:
    pts = [RegisterPoint(name=f"p{i}", function=f, address=a, type=k)  # type: ignore[arg-type]
           for i, (a, k, f) in enumerate(spots)]
    plan = compile_plan(pts, ModbusLimits(max_registers_per_request=maximum, gap_fill=gap))
    seen = []
    for r in plan.requests:
        assert 1 <= r.count <= maximum
        for pp in r.points:
            assert pp.point.function == r.function
            assert pp.offset == pp.point.address - r.address
            assert pp.offset >= 0 and pp.offset + pp.point.width <= r.count
            seen.append(pp.point.name)
    assert sorted(seen) == sorted(p.name for p in pts)


def test_the_drivers_inline_integer_decoding_equals_decode_bytes() -> None:
    """The plan's decode table (fast path for plain integers) gives decode_bytes's values."""
    import random
    from decimal import Decimal

    from drivers.modbus.decode import decode_bytes
    from drivers.modbus.driver import _decode_into
    from gateway.model import PointResult

    kinds = ["u16", "i16", "u32", "i32", "u64", "i64", "bcd16", "f32"]
    orders = [("big", "big"), ("little", "big"), ("big", "little")]
    rng = random.Random(7)
    addr = 0
    points = []
    for i, kind in enumerate(kinds * 3):
        wo, bo = orders[i % 3]
        scale = [Decimal(1), Decimal("0.01"), Decimal("0.000001")][i % 3]
        p = RegisterPoint(f"p{i}", 3, addr, kind, word_order=wo, byte_order=bo, scale=scale)  # type: ignore[arg-type]
        points.append(p)
        addr += p.width
    plan = compile_plan(points, ModbusLimits(max_registers_per_request=125))
    assert any(step[3] is not None for r in plan.requests for step in r.layout)   # fast path used
    assert any(step[3] is None for r in plan.requests for step in r.layout)       # and the general one
    for _ in range(200):
        for request in plan.requests:
            data = bytes(rng.randrange(256) for _ in range(2 * request.count))
            got: dict[str, PointResult] = {}
            _decode_into(got, request.layout, data)
            for pp in request.points:
                chunk = data[2 * pp.offset: 2 * (pp.offset + pp.point.width)]
                try:
                    want = PointResult(decode_bytes(pp.point, chunk))
                except Exception as exc:
                    want = PointResult(None, "invalid", str(exc))
                assert got[pp.point.name] == want, pp.point


_INT_KINDS: list[RegisterType] = ["u16", "i16", "u32", "i32", "u64", "i64"]


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(_INT_KINDS), st.integers(0, 3),
                          st.sampled_from(["1", "0.01", "0.000001", "2.5", "1E+1"])), min_size=1, max_size=8),
       st.binary(min_size=64, max_size=64), st.integers(0, 6))
def test_a_request_of_plain_integers_is_unpacked_at_once_as_each_point_decodes(
        spec: list[tuple[RegisterType, int, str]], noise: bytes, short: int) -> None:
    """A request of nothing but big-endian integers (gaps between them read through) gets
    one struct for all of them: it gives each point exactly decode_bytes's Decimal (value
    and exponent), in the plan's order; a reply too short for it is decoded point by point,
    with the same results as before."""
    from decimal import Decimal

    from drivers.modbus.decode import decode_bytes
    from drivers.modbus.driver import _decode_into
    from drivers.modbus.plan import DecodeLayout
    from gateway.model import PointResult

    points = []
    addr = 0
    for i, (kind, gap, scale) in enumerate(spec):
        addr += gap
        points.append(RegisterPoint(f"p{i}", 3, addr, kind, scale=Decimal(scale)))
        addr += REGISTER_WIDTH[kind]
    plan = compile_plan(points, ModbusLimits(max_registers_per_request=125, gap_fill=10))
    for request in plan.requests:
        assert isinstance(request.layout, DecodeLayout) and request.layout.ints is not None
        data = (noise * 8)[:2 * request.count - (short if short < 2 * request.count else 0)]
        got: dict[str, PointResult] = {}
        _decode_into(got, request.layout, data)
        assert list(got) == [pp.point.name for pp in request.points]
        for pp in request.points:
            chunk = data[2 * pp.offset: 2 * (pp.offset + pp.point.width)]
            try:
                want = PointResult(decode_bytes(pp.point, chunk))
            except Exception as exc:  # a short reply: the point is invalid, as before
                want = PointResult(None, "invalid", str(exc))
            assert repr(got[pp.point.name]) == repr(want)


def test_a_layout_that_is_not_all_plain_integers_is_decoded_point_by_point() -> None:
    """Overlapping points, a float or a swapped word order: no struct (each step alone);
    a layout pickles as its steps and gets its struct back."""
    import pickle

    from drivers.modbus.plan import DecodeLayout

    overlap = compile_plan([pt("a", 0, "u32"), pt("b", 1, "u16")], ModbusLimits())
    flt = compile_plan([pt("a", 0, "u32"), pt("b", 2, "f32")], ModbusLimits())
    swapped = compile_plan([RegisterPoint("a", 3, 0, "u32", word_order="little")], ModbusLimits())
    for plan in (overlap, flt, swapped):
        layout = plan.requests[0].layout
        assert isinstance(layout, DecodeLayout) and layout.ints is None
    plain = compile_plan([pt("a", 0, "u32"), pt("b", 4, "i16")], ModbusLimits())
    again = pickle.loads(pickle.dumps(plain))
    assert again == plain
    layout = again.requests[0].layout
    assert isinstance(layout, DecodeLayout) and layout.ints is not None
    assert layout.ints.format == ">I4xh"     # the 2 registers between them read through
