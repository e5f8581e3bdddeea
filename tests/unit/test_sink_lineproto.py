"""Line protocol for committed messages: escaping, fields per good point, seq, timestamps."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.model import PointValue, Reading, reading_payload
from gateway.sinks import lineproto
from gateway.sinks.lineproto import (
    LineError,
    escape_key,
    escape_measurement,
    escape_tag_value,
    measurement_for,
    number_text,
    number_text_by_regex,
    reading_line,
    row_line,
)


def reading(meter: str = "m1", customer: str = "C1", bus: str = "b1") -> Reading:
    """A reading with a good exact register, a float, a failed point and a text value."""
    return Reading(
        meter=meter, customer=customer, bus=bus, schedule="interval", slot=1_767_225_600.0,
        ts=1_767_225_600.1234,
        points={
            "energy_import_kwh": PointValue(Decimal("12345.67"), Decimal("493826.80"), "kWh"),
            "power_factor": PointValue(0.98, 0.98, ""),
            "voltage_v_l1": PointValue(None, None, "V", "timeout", "no reply"),
            "meter_clock": PointValue("2026-01-01T00:00:00", "2026-01-01T00:00:00", ""),
        },
    )


def test_reading_line_has_sorted_tags_good_points_seq_and_ms_timestamp() -> None:
    payload = reading_payload(reading(), "gw-1", 42)
    line = row_line("amr_reading", "reading", "m1", 1_767_225_600.1234, payload, 42)
    assert line == ("amr_reading,bus=b1,customer=C1,gateway=gw-1,meter=m1,schedule=interval "
                    "energy_import_kwh=493826.80,power_factor=0.98,seq=42i 1767225600123")


def test_readings_of_two_schedules_at_one_instant_are_two_points() -> None:
    """A point is measurement + tags + timestamp: the schedule tag keeps the realtime and the
    interval reading of one meter in the same millisecond apart, and each carries its seq."""
    realtime = reading()
    realtime.schedule = "realtime"
    a = row_line("amr_reading", "reading", "m1", realtime.ts, reading_payload(realtime, "g", 7), 7)
    b = row_line("amr_reading", "reading", "m1", realtime.ts, reading_payload(reading(), "g", 8), 8)
    key_a, fields_a, ts_a = a.split(" ")
    key_b, fields_b, ts_b = b.split(" ")
    assert ts_a == ts_b and key_a != key_b
    assert key_a.endswith(",schedule=realtime") and key_b.endswith(",schedule=interval")
    assert fields_a.endswith(",seq=7i") and fields_b.endswith(",seq=8i")


def test_special_characters_are_escaped() -> None:
    payload = reading_payload(reading(meter="m 1,a=b", customer="C\\", bus="b\nx"), "g w", 1)
    line = row_line("amr reading,x", "reading", None, 0.0, payload, 1)
    assert line.startswith("amr\\ reading\\,x,bus=b\\nx,customer=C\\\\,gateway=g\\ w,meter=m\\ 1\\,a\\=b,"
                           "schedule=interval ")


def test_escape_helpers() -> None:
    assert escape_measurement("a b,c=d") == r"a\ b\,c=d"
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    assert escape_tag_value("ends\\") == "ends\\\\"          # doubled: read back as one backslash
    assert escape_tag_value("a\\ b") == "a\\\\\\ b"
    assert escape_key("tab\tnl\ncr\r") == r"tab\tnl\ncr\r"


def test_measurement_per_kind() -> None:
    assert measurement_for("amr_reading", "reading") == "amr_reading"
    assert measurement_for("amr_reading", "settlement") == "amr_settlement"
    assert measurement_for("meters", "event") == "meters_event"


def test_generic_kinds_flatten_numeric_leaves() -> None:
    doc = {"schema": "amr.settlement.v1", "gateway": "g", "seq": 9, "meter": "m1", "customer": "C1",
           "quality": "actual", "registers": {"energy_import_kwh": {"start": 1.5, "end": 3}},
           "ok": True, "list": [1, 2]}
    line = row_line("amr_reading", "settlement", "m1", 1.0, json.dumps(doc), 9)
    assert line == ("amr_settlement,customer=C1,gateway=g,meter=m1 "
                    "registers_energy_import_kwh_start=1.5,registers_energy_import_kwh_end=3,seq=9i 1000")


def test_failed_only_reading_still_leaves_a_point() -> None:
    r = reading()
    r.points = {"power_kw": PointValue(None, None, "kW", "crc_error", "bad crc")}
    line = row_line("amr_reading", "reading", "m1", 2.0, reading_payload(r, "g", 5), 5)
    assert line.endswith(" seq=5i 2000")


def test_not_json_is_a_line_error() -> None:
    with pytest.raises(LineError):
        row_line("amr_reading", "reading", "m1", 0.0, "not json", 1)
    with pytest.raises(LineError):
        row_line("amr_reading", "reading", "m1", 0.0, "[1]", 1)


def test_number_text() -> None:
    assert number_text("12.50") == "12.50"
    assert number_text("-3") == "-3"
    assert number_text("1e3") == "1000.0"
    assert number_text("1e999") is None


@given(st.one_of(
    st.decimals(places=None).map(str),
    st.decimals(places=None).filter(lambda d: d.is_finite()).map(lambda d: format(d, "f")),
    st.integers().map(str),
    st.floats().map(repr),
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{0,4})?([eE][-+]?[0-9]{1,3})?", fullmatch=True),
    st.text(alphabet="0123456789.-+eE٣١²\u00a0 Nainf", max_size=8),
))
def test_number_text_is_the_regex_test_it_replaced(raw: str) -> None:
    """The plain-decimal test without the regex gives what the regex gave for every text:
    Decimals and ints as the store writes them, floats, exponents, negatives, NaN and
    infinities, Unicode digits and odd text."""
    assert number_text(raw) == number_text_by_regex(raw)


@given(st.text(min_size=1, max_size=20))
def test_escaped_tag_values_never_contain_bare_separators(value: str) -> None:
    out = escape_tag_value(value)
    i = 0
    while i < len(out):
        if out[i] == "\\":
            i += 2
            continue
        assert out[i] not in ", =\n\r\t"
        i += 1


def test_escapes_are_remembered_within_a_bound() -> None:
    """Escaped names are cached (they recur in every line) but a stream of one-off names
    cannot grow the cache past its limit, and a name escapes the same before and after."""
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    for i in range(lineproto._CACHE_LIMIT + 10):
        escape_tag_value(f"meter {i}")
    assert 0 < len(lineproto._escaped_keys) <= lineproto._CACHE_LIMIT
    assert escape_key("a b,c=d") == r"a\ b\,c\=d"
    assert escape_tag_value("meter 7") == r"meter\ 7"


_names = st.text(alphabet="abcz019 ,=\\\"é\n\t", max_size=8)
_values = st.one_of(
    st.none(),
    st.decimals(allow_nan=True, allow_infinity=True, places=None),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-10**12, 10**12),
    st.text(max_size=5),
)


@given(meter=_names.filter(bool), customer=_names, bus=_names, gateway=_names, schedule=_names,
       points=st.dictionaries(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
                              st.tuples(_values, st.sampled_from(["good", "timeout"])), max_size=6),
       ts=st.floats(0, 4e9), seq=st.integers(1, 10**9))
def test_the_line_rendered_at_commit_is_the_line_parsed_from_the_payload(
        meter: str, customer: str, bus: str, gateway: str, schedule: str, points: dict[str, tuple[object, str]],
        ts: float, seq: int) -> None:
    """The store renders live readings with reading_line; replays are rendered from the
    committed JSON by row_line. Both must write the same text, or a replay would rewrite a
    point differently."""
    r = Reading(meter=meter, customer=customer, bus=bus, schedule=schedule, slot=ts - ts % 60, ts=ts,
                points={n: PointValue(v, v, "kWh", q) for n, (v, q) in points.items()})  # type: ignore[arg-type]
    payload = reading_payload(r, gateway, seq)
    assert reading_line("amr_reading", gateway, r, seq) == row_line("amr_reading", "reading", meter, ts, payload, seq)
