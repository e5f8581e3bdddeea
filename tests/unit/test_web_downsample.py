"""The console's server-side downsampling keeps every bucket's extremes and bounds the point count."""

from __future__ import annotations

import math
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.api.params import BadRequest
from gateway.model import PointValue, Reading
from gateway.settings import StoreSettings
from gateway.store import Store
from gateway.storecodec import register, render, shape_from_spec
from gateway.web.data import parse_points, point_values, series_doc, series_values
from gateway.web.downsample import downsample
from tests.servicefixtures import commit

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


async def _outbox(tmp_path: Path, rows: list[tuple[float, dict[str, PointValue]]]) -> sqlite3.Connection:
    """A real store (SQLite on disk, the gateway's own schema and codec) holding good readings
    of meter m, opened as the API's read pool opens it."""
    db = tmp_path / "amr.sqlite"
    store = await Store.open(db, StoreSettings(synchronous="NORMAL", commit_interval_s=0.01), "gw")
    try:
        await commit(store, [Reading(meter="m", customer="C", bus="b", schedule="realtime", slot=t, ts=t + 0.4,
                                     points=pts) for t, pts in rows])
    finally:
        await store.close()
    return register(sqlite3.connect(db))


async def test_the_store_query_gives_the_same_buckets_as_downsample_and_raw_points_when_few(tmp_path: Path) -> None:
    rows: list[tuple[float, dict[str, PointValue]]] = []
    for t, v in year_of_quarter_hours()[:20_000]:
        kw = Decimal(repr(round(v, 3)))
        pts = {"power_kw": PointValue(kw, kw, "kW")}
        if int(t) % 7200 == 0:
            third = Decimal(repr(round(v / 3, 3)))
            pts["power_kw_l1"] = PointValue(third, third, "kW")
        pts["meter_clock"] = PointValue("2026-12-01T00:00:00", "2026-12-01T00:00:00", "")
        rows.append((t, pts))
    conn = await _outbox(tmp_path, rows)
    end = 20_000 * STEP_S
    got = series_values(conn, "m", ["power_kw", "power_kw_l1", "meter_clock"], 0.0, end, 480)
    exact = point_values(conn, "m", ["power_kw", "power_kw_l1"], 0.0, end)
    assert len(exact["power_kw"]) == 20_000 and len(exact["power_kw_l1"]) == 2_500
    for p in ("power_kw", "power_kw_l1"):
        want = downsample(exact[p], 0.0, end, 480)
        assert len(got[p]) == len(want) <= 480
        for a, b in zip(got[p], want, strict=True):
            assert (a.start, a.count, a.min, a.max) == (b.start, b.count, b.min, b.max)
            assert a.avg == pytest.approx(b.avg)
    assert got["meter_clock"] == []                     # not a number: no buckets, no error
    # few readings: every point is its own bucket at its read time, with its exact value
    few = series_values(conn, "m", ["power_kw"], 0.0, 10 * STEP_S, 480)["power_kw"]
    assert [(b.min_ts, b.min) for b in few] == [(t + 0.4, float(round(v, 3)))
                                                for t, v in year_of_quarter_hours()[:10]]
    doc = series_doc("m", {"power_kw": few}, 0.0, 10 * STEP_S, 480)
    assert doc["points"] == {"power_kw": 10}
    assert doc["series"]["power_kw"][0]["min_ts"] == "1970-01-01T00:00:00.400Z"


def test_the_overview_keeps_each_meters_clock_offset_from_its_meter_clock_point() -> None:
    from typing import Any, cast

    from gateway.model import PointValue, Reading
    from gateway.web.data import ConsoleData

    data = ConsoleData()
    data.tz = "Asia/Shanghai"
    at = 1_796_054_400.0                                   # 2026-12-01T00:00:00+08:00
    meter = cast(Any, None)                                # observe() reads only the reading

    def reading(clock: str, quality: str = "good") -> Reading:
        return Reading("m1", "C1", "b1", "realtime", at, at, {"meter_clock": PointValue(clock, clock, "")},
                       quality=quality)  # type: ignore[arg-type]

    data.observe(meter, reading("2026-12-01T00:07:00"))        # local time, 420 s ahead
    assert data.offsets["m1"] == (420.0, at)
    data.observe(meter, reading("2026-11-30T15:59:30Z"))       # with its offset: 30 s behind
    assert data.offsets["m1"][0] == -30.0
    data.observe(meter, reading("not a time"))                 # kept as it was
    data.observe(meter, reading("2026-12-01T01:00:00", quality="timeout"))
    assert data.offsets["m1"][0] == -30.0


async def test_the_series_equals_what_rendering_each_whole_message_gives(tmp_path: Path) -> None:
    """The series reads each row's requested values straight from the compact row
    (``points_sql``); before, it rendered each row's whole published message and
    ``json_extract``-ed from that. Both ways over the same real store, raw points (few
    readings) and SQL buckets (many) alike: the same buckets, bit for bit. The store holds
    values scaled by CT × PT (kept as a mark), a value that is not (kept as itself), a string
    point, points missing from some readings, and failed reads."""
    rnd = random.Random(5)
    ct = Decimal("40")
    rows: list[Reading] = []
    raw_kw: list[Decimal] = []
    for k in range(3000):
        t = k * STEP_S
        raw = Decimal(f"{rnd.uniform(0, 5):.4f}")
        raw_kw.append(raw)
        pts = {"power_kw": PointValue(raw, raw * ct, "kW"),
               "power_kw_l1": PointValue(raw / 3, Decimal(f"{rnd.uniform(0, 90):.2f}"), "kW"),
               "meter_clock": PointValue("2026-12-01T00:00:00", "2026-12-01T00:00:00", "")}
        if k % 5:
            pts["power_kw_l2"] = PointValue(k % 40, k % 40, "kW")       # ints, on most readings only
        rows.append(Reading(meter="m", customer="C", bus="b", schedule="interval", slot=t, ts=t + 0.4,
                            points=pts, ct=ct))
        if k % 97 == 0:
            failed = {n: PointValue(None, None, "kW", "timeout") for n in pts}
            rows.append(Reading(meter="m", customer="C", bus="b", schedule="interval", slot=t, ts=t + 0.9,
                                points=failed, quality="timeout", ct=ct))
    db = tmp_path / "amr.sqlite"
    store = await Store.open(db, StoreSettings(synchronous="NORMAL", commit_interval_s=0.01), "gw")
    try:
        await commit(store, rows)
    finally:
        await store.close()

    def whole_message(payload: str, spec: str, names: str) -> str:   # the old way: the whole text
        return render(shape_from_spec(0, spec), 0, 0.0, 0.0, "good", payload)

    conn = register(sqlite3.connect(db))
    old = register(sqlite3.connect(db))
    old.create_function("amr_points", 3, whole_message, deterministic=True)
    names = ["power_kw", "power_kw_l1", "power_kw_l2", "meter_clock", "no_such_point"]
    for start, end, buckets in ((0.0, 3000 * STEP_S, 480), (0.0, 3000 * STEP_S, 1), (100 * STEP_S, 400 * STEP_S, 600)):
        new_way = series_values(conn, "m", names, start, end, buckets)
        old_way = series_values(old, "m", names, start, end, buckets)
        assert new_way == old_way
        assert len(new_way["power_kw"]) == min(buckets, int((end - start) // STEP_S))
        assert new_way["meter_clock"] == new_way["no_such_point"] == []
    exact = point_values(conn, "m", names, 0.0, 3000 * STEP_S)
    assert exact == point_values(old, "m", names, 0.0, 3000 * STEP_S)
    assert len(exact["power_kw"]) == 3000 and len(exact["power_kw_l2"]) == 2400
    assert exact["power_kw"][1] == (STEP_S + 0.4, float(raw_kw[1] * ct))
