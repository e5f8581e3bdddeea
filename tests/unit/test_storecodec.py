"""The compact reading form renders back to exactly the message the store used to keep.

Readings generated over the value kinds a driver returns (Decimals with any exponent,
floats, ints, strings, nulls), CT/PT factors applied or not, failed points with reasons,
failed reads, errors and billing extras, non-ASCII names: ``render(encode(r))`` must equal
``reading_payload(r)`` byte for byte, and so must the migration's conversion of that
payload.
"""

from __future__ import annotations

import json
import random
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.model import PointValue, Quality, Reading, Value, reading_payload
from gateway.settings import StoreSettings
from gateway.sinks.lineproto import compact_line, reading_line, row_line
from gateway.store import Store
from gateway.storecodec import (
    PAYLOAD_SQL,
    Shape,
    ShapeKey,
    compact_of_payload,
    encode,
    factors_of,
    marks_of,
    point_values_json,
    points_sql,
    register,
    render,
    shape_from_spec,
    shape_key,
    spec_of,
)
from tests.servicefixtures import commit

_QUALITIES: tuple[Quality, ...] = ("timeout", "crc_error", "exception", "invalid")


def _value(rng: random.Random) -> Value:
    k = rng.randrange(6)
    if k == 0:
        return Decimal(rng.randrange(0, 10**9)).scaleb(-rng.randrange(0, 5))
    if k == 1:
        return Decimal(f"{rng.randrange(1, 999)}E+{rng.randrange(1, 4)}")
    if k == 2:
        return rng.uniform(-1000, 1000)
    if k == 3:
        return rng.randrange(-5000, 5000)
    if k == 4:
        return rng.choice(["on", "Ünit \"x\"", "a\\b\x01"])
    return round(rng.uniform(0, 300), rng.randrange(0, 4))


def _reading(rng: random.Random) -> Reading:
    ct = rng.choice([Decimal(1), Decimal("40"), Decimal("1.0"), Decimal("100.5")])
    pt = rng.choice([Decimal(1), Decimal("100"), Decimal("0.5")])
    names = rng.sample(["energy_import_kwh", "power_kw", "voltage_l1", "current_l1", "power_factor",
                        "frequency_hz", "énergie", "energy_export_kwh", "demand_max_kw"], rng.randrange(0, 9))
    points: dict[str, PointValue] = {}
    for n in names:
        raw = _value(rng)
        roll = rng.random()
        if roll < 0.1:
            points[n] = PointValue(None, None, "kWh", rng.choice(_QUALITIES), rng.choice([None, "no value", "ß"]))
        elif roll < 0.5 and not isinstance(raw, str):
            f = rng.choice([ct * pt, ct, pt, Decimal("3")])
            value: Value = raw * f if isinstance(raw, Decimal) else Decimal(repr(raw)) * f
            points[n] = PointValue(raw, value, rng.choice(["kWh", "V", ""]))
        elif roll < 0.6:
            points[n] = PointValue(raw, raw, "A", "invalid", "out of range")
        else:
            points[n] = PointValue(raw, raw, "kW")
    r = Reading(meter=rng.choice(["m1", "méter/2"]), customer="c", bus="b1", schedule="interval",
                slot=1767225600.0 + rng.randrange(0, 10**6) * 0.001, ts=1767225600.0 + rng.random() * 1e5,
                points=points, ct=ct, pt=pt)
    if rng.random() < 0.2:
        r.quality, r.error = "timeout", "no reply \"in time\""
    if rng.random() < 0.15:
        r.extra["billing"] = {"plan": "p", "since_cycle_start_kwh": Decimal("12.50"), "cycle_start_quality": None}
    return r


def _failed(q: Quality) -> Reading:
    pts = {n: PointValue(None, None, "kWh", q, None) for n in ("energy_import_kwh", "power_kw")}
    return Reading(meter="m1", customer="c", bus="b1", schedule="realtime", slot=1767225600.0, ts=1767225600.25,
                   points=pts, quality=q, error="power_kw: timeout")


def shape_of(r: Reading, gateway: str, shapes: dict[ShapeKey, Shape]) -> Shape:
    """The shape ``r`` is stored against, made the first time its key is met (as the store does)."""
    key = shape_key(r, gateway)
    if key not in shapes:
        shapes[key] = shape_from_spec(len(shapes) + 1, spec_of(key, marks_of(r, factors_of(key[5], key[6]))))
    return shapes[key]


@pytest.mark.parametrize("seed", range(4))
def test_render_of_encode_is_the_payload_byte_for_byte(seed: int) -> None:
    rng = random.Random(seed)
    shapes: dict[ShapeKey, Shape] = {}
    for k in range(500):
        r = _reading(rng) if k % 50 else _failed(rng.choice(_QUALITIES))
        shape = shape_of(r, "gw-1", shapes)
        body = encode(r, shape)
        want = reading_payload(r, "gw-1", 1000 + k)
        assert render(shape, 1000 + k, r.slot, r.ts, r.quality, body) == want
        # the migration's conversion of the old stored text gives the same text back
        got = compact_of_payload(want, lambda kk, mm: shapes.setdefault(kk, shape_from_spec(len(shapes) + 1,
                                                                                          spec_of(kk, mm))),
                                 1000 + k, r.slot, r.ts, r.quality)
        assert got is not None
        assert render(got[0], 1000 + k, r.slot, r.ts, r.quality, got[1]) == want


@pytest.mark.parametrize("seed", range(4))
def test_the_line_of_a_compact_row_is_the_line_of_its_message(seed: int) -> None:
    """The InfluxDB sink writes a compact row's line from its stored values (compact_line);
    it must be the line row_line makes of the rendered message, character for character."""
    rng = random.Random(100 + seed)
    shapes: dict[ShapeKey, Shape] = {}
    fields = 0
    for k in range(500):
        r = _reading(rng) if k % 50 else _failed(rng.choice(_QUALITIES))
        shape = shape_of(r, "gw 1", shapes)
        body = encode(r, shape)
        want = row_line("amr reading", "reading", r.meter, r.ts, render(shape, 7 + k, r.slot, r.ts, r.quality, body),
                        7 + k)
        assert compact_line("amr reading", shape, 7 + k, r.ts, body) == want
        assert reading_line("amr reading", "gw 1", r, 7 + k) == want
        fields += want.count("=")
    assert fields > 2000          # the readings had numeric fields to write, not only seq


def test_a_good_fifteen_point_reading_is_small() -> None:
    pts = {f"energy_{i}_kwh": PointValue(Decimal("12345.67") + i, Decimal("12345.67") + i, "kWh") for i in range(15)}
    r = Reading(meter="m1", customer="c", bus="b1", schedule="interval", slot=1767225600.0, ts=1767225600.1,
                points=pts)
    key = shape_key(r, "gw")
    body = encode(r, shape_from_spec(1, spec_of(key, ("=",) * 15)))
    assert len(body) < 150 < len(reading_payload(r, "gw", 1))


def test_an_unknown_message_layout_is_kept_verbatim() -> None:
    assert compact_of_payload('{"schema":"amr.reading.v0","x":1}', lambda k, m: shape_from_spec(1, spec_of(k, m)),
                              1, 0.0, 0.0, "good") is None


async def test_a_few_values_read_in_sql_are_those_of_the_published_message(tmp_path: Path) -> None:
    """``points_sql`` (the series' way: the requested values of a compact row, no whole
    message) gives, through ``json_extract``, the same SQL value — type and value — as the
    message :data:`PAYLOAD_SQL` renders, for every row of a real store: compact readings of
    every kind the generator makes (CT/PT marks, explicit values, strings, failed points and
    reads), and a message a migration kept verbatim (``shape`` NULL)."""
    rng = random.Random(11)
    readings = [_reading(rng) if k % 40 else _failed(rng.choice(_QUALITIES)) for k in range(600)]
    db = tmp_path / "amr.sqlite"
    store = await Store.open(db, StoreSettings(synchronous="NORMAL", commit_interval_s=0.01), "gw-1")
    try:
        await commit(store, readings)
    finally:
        await store.close()
    conn = register(sqlite3.connect(db))
    try:
        verbatim = reading_payload(readings[1], "gw-1", 10_000)
        conn.execute("INSERT INTO outbox(seq, kind, meter, schedule, retention, slot, ts, quality, payload, shape) "
                     "VALUES (10000, 'reading', 'm1', 'interval', 'interval', 0, 0, 'good', ?, NULL)", (verbatim,))
        names = ["power_kw", "énergie", "energy_import_kwh", "voltage_l1", "absent_point", "frequency_hz"]
        paths = [f'$.points."{n}".value' for n in names]
        cols = ", ".join(f"typeof(json_extract(a, '{p}')), json_extract(a, '{p}'), "
                         f"typeof(json_extract(b, '{p}')), json_extract(b, '{p}')" for p in paths)
        rows = conn.execute(f"WITH d AS (SELECT {PAYLOAD_SQL} AS a, {points_sql('?1')} AS b FROM outbox "
                            f"WHERE kind='reading') SELECT {cols} FROM d", (json.dumps(names),)).fetchall()
        assert len(rows) == 601
        seen: set[str] = set()
        for row in rows:
            for k in range(0, len(row), 4):
                assert row[k:k + 2] == row[k + 2:k + 4]
                seen.add(str(row[k]))
        assert seen >= {"real", "integer", "text", "null"}           # every kind of value was compared
        # only what was asked for is given, one value per requested point the shape has
        spec = conn.execute("SELECT spec FROM reading_shape LIMIT 1").fetchone()[0]
        body = conn.execute("SELECT payload FROM outbox WHERE shape=1 LIMIT 1").fetchone()[0]
        doc = json.loads(point_values_json(body, spec, json.dumps(["absent_point", *names])))
        assert set(doc["points"]) <= set(names) - {"absent_point"}
        assert all(list(v) == ["value"] for v in doc["points"].values())
    finally:
        conn.close()
