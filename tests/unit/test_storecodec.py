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
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import PointValue, Quality, Reading, Value, reading_payload
from gateway.settings import Ratio, StoreSettings
from gateway.sinks.lineproto import compact_line, number_text, reading_line, row_line
from gateway.store import Store
from gateway.storecodec import (
    PAYLOAD_SQL,
    Shape,
    ShapeKey,
    compact_of_payload,
    encode,
    factors_of,
    good_values,
    marks_of,
    plain_values,
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
        # a second InfluxDB sink with its own measurement, on the same (memoised) shape
        other = row_line("amr2", "reading", r.meter, r.ts, render(shape, 7 + k, r.slot, r.ts, r.quality, body), 7 + k)
        assert compact_line("amr2", shape, 7 + k, r.ts, body) == other
        assert compact_line("amr reading", shape, 7 + k, r.ts, body) == want
        fields += want.count("=")
    assert fields > 2000          # the readings had numeric fields to write, not only seq


_plain_raws = st.one_of(
    st.decimals(allow_nan=False, allow_infinity=False, places=None),
    st.integers(-10**6, 10**12).map(lambda n: Decimal(n).scaleb(-3)),
    st.integers(-10**20, 10**20),
)


@settings(max_examples=300)
@given(raws=st.lists(_plain_raws, min_size=1, max_size=9),
       scaled=st.lists(st.booleans(), min_size=9, max_size=9),
       ct=st.sampled_from([Decimal(1), Decimal("40"), Decimal("1.0"), Decimal("100.5"), Decimal("2E+1")]),
       pt=st.sampled_from([Decimal(1), Decimal("100"), Decimal("0.5")]),
       seq=st.integers(1, 10**9), ts=st.floats(0, 4e9))
def test_a_plain_reading_takes_the_fast_paths_and_writes_the_same_text(
        raws: list[Decimal | int], scaled: list[bool], ct: Decimal, pt: Decimal, seq: int, ts: float) -> None:
    """Every point good, a number and its value raw or raw × CT/PT (the usual reading):
    render and compact_line write it from the shape's pieces (plain_values), and the text
    must be the general path's — the message reading_payload writes and the line row_line
    parses out of it — character for character, whatever the digits and exponents."""
    points: dict[str, PointValue] = {}
    for k, raw in enumerate(raws):
        value: Value = raw * ct * pt if scaled[k] and isinstance(raw, Decimal) else raw
        points[f"p{k}"] = PointValue(raw, value, "kWh" if k % 2 else "V")
    r = Reading(meter="m 1", customer="c", bus="b1", schedule="interval", slot=ts - ts % 60, ts=ts,
                points=points, ct=ct, pt=pt)
    shape = shape_of(r, "gw", {})
    body = encode(r, shape)
    message = render(shape, seq, r.slot, r.ts, r.quality, body)
    assert message == reading_payload(r, "gw", seq)
    line = compact_line("amr_reading", shape, seq, r.ts, body)
    assert line == row_line("amr_reading", "reading", r.meter, r.ts, message, seq)
    assert line == reading_line("amr_reading", "gw", r, seq)
    if "\x1f" not in body:      # every value its raw or the shape's usual product: the fast path
        assert plain_values(shape, body) is not None


_shape_for_bodies = shape_from_spec(1, spec_of(("gw", "m1", "c", "b1", "s", "40", "0.5", ("a", "b", "c"),
                                                ("kWh", "V", "")), ("=", "*", "p")))


@settings(max_examples=500)
@given(st.lists(st.one_of(st.from_regex(r"-?[0-9]{1,4}(\.[0-9]{1,3})?", fullmatch=True),
                          st.text(alphabet="0123456789.-eE+٣\x1e\x1f\x1d\x1cn", max_size=6)),
                min_size=0, max_size=4))
def test_plain_values_are_the_good_values_of_any_body_they_accept(items: list[str]) -> None:
    """plain_values answers only for bodies whose every value number_text passes through
    unchanged, and then gives exactly good_values' values: any other body (a field, a
    tail, a failed read, an empty or odd number, a count that is not the shape's) is None."""
    body = "\x1e".join(items)
    plain = plain_values(_shape_for_bodies, body)
    if plain is None:
        return
    assert plain == good_values(_shape_for_bodies, body)
    assert all(v is not None and number_text(v) == v for v in plain)


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


def test_shapes_of_meters_with_one_profile_share_their_pieces() -> None:
    """A thousand meters of one profile keep one copy of the point names, marks and text
    pieces (they were a megabyte or more of the gateway's memory), and each its own meter."""
    def spec(meter: str) -> str:
        return json.dumps({"v": 1, "gateway": "g", "meter": meter, "customer": "c", "bus": f"bus-{meter}",
                           "schedule": "s", "ct": "1", "pt": "1",
                           "points": [["energy_import_kwh", "kWh", "="], ["power_kw", "kW", "="]]})
    a, b = shape_from_spec(1, spec("m1")), shape_from_spec(2, spec("m2"))
    assert a.names is b.names and a.marks is b.marks and a.openers is b.openers and a.units is b.units
    assert a.head is b.head and a.multiplier is b.multiplier
    assert a.plain_parts is not None and b.plain_parts is not None
    assert a.plain_parts is b.plain_parts                 # the meter's own text is a gap (middle)
    assert a.factors is b.factors and a.scaled is b.scaled
    assert '"meter":"m1"' in a.middle and '"meter":"m2"' in b.middle
    assert dict(a.tags)["meter"] == "m1" and dict(b.tags)["meter"] == "m2"
    assert a.tags[2] is b.tags[2]                         # (gateway, g): one pair for all


def test_equal_factors_written_differently_keep_their_own_text() -> None:
    """Shared factors are keyed by their text: CT 40 and CT 40.0 are equal Decimals, but a
    reading under each states its own (and its values scale to their own digits)."""
    assert factors_of("40", "1") is factors_of("40", "1")
    assert str(factors_of("40", "1")["c"]) == "40" and str(factors_of("40.0", "1")["c"]) == "40.0"
    assert str(Ratio(Decimal(200), Decimal(5)).factor) == "40"
    assert str(Ratio(Decimal("200.0"), Decimal(5)).factor) == "40.0"
    assert Ratio(Decimal(200), Decimal(5)).factor is Ratio(Decimal(200), Decimal(5)).factor
