"""The console's server-side downsampling keeps every bucket's extremes and bounds the point count."""

from __future__ import annotations

import math
import random

import pytest

from gateway.api.params import BadRequest
from gateway.web.data import parse_points
from gateway.web.downsample import downsample

YEAR_S = 365 * 86400.0
STEP_S = 900.0


def year_of_quarter_hours(seed: int = 7) -> list[tuple[float, float]]:
    rnd = random.Random(seed)
    return [(i * STEP_S, 50 + 40 * math.sin(i / 96 * 2 * math.pi) + rnd.uniform(-5, 5))
            for i in range(int(YEAR_S // STEP_S))]


def test_a_year_of_15_minute_data_becomes_at_most_the_chart_width_and_keeps_each_buckets_min_and_max() -> None:
    pts = year_of_quarter_hours()
    pts[12_345] = (pts[12_345][0], 999.0)          # one spike, one dip: never averaged away
    pts[23_456] = (pts[23_456][0], -123.0)
    out = downsample(pts, 0.0, YEAR_S, 960)
    assert len(pts) == 35_040 and 900 <= len(out) <= 960
    assert sum(b.count for b in out) == len(pts)
    assert max(b.max for b in out) == 999.0 and min(b.min for b in out) == -123.0
    spike = next(b for b in out if b.max == 999.0)
    assert spike.max_ts == pts[12_345][0] and spike.start <= spike.max_ts < spike.end
    for b in out:                                   # each bucket's figures are those of its own points
        own = [v for t, v in pts if b.start <= t < b.end]
        assert (b.count, b.min, b.max) == (len(own), min(own), max(own))
        assert b.avg == pytest.approx(sum(own) / len(own))


def test_few_points_are_returned_raw_and_an_empty_bucket_stays_a_gap() -> None:
    pts = [(0.0, 1.5), (900.0, 2.5), (1800.0, 0.25)]
    raw = downsample(pts, 0.0, 3600.0, 10)
    assert [(b.start, b.count, b.min, b.max, b.avg) for b in raw] == [
        (0.0, 1, 1.5, 1.5, 1.5), (900.0, 1, 2.5, 2.5, 2.5), (1800.0, 1, 0.25, 0.25, 0.25)]
    # many points with a day missing in the middle: no bucket covers the missing day
    dense = [(float(t), 1.0) for t in range(0, 86400, 60)] + [(float(t), 2.0) for t in range(2 * 86400, 3 * 86400, 60)]
    out = downsample(dense, 0.0, 3 * 86400.0, 30)
    assert len(out) == 20
    assert not any(86400.0 <= b.start < 2 * 86400.0 for b in out)
    # points outside the range are not counted
    assert sum(b.count for b in downsample(dense, 0.0, 86400.0, 30)) == 1440
    with pytest.raises(ValueError):
        downsample(dense, 0.0, 1.0, 0)


def test_points_parameter() -> None:
    assert parse_points(None) == ["power_kw"]
    assert parse_points("power_kw, power_kw_l1,power_kw") == ["power_kw", "power_kw_l1"]
    for bad in ("", "a,b,c,d,e,f,g,h,i", "power kw", "Power", "x;drop"):
        with pytest.raises(BadRequest):
            parse_points(bad)
