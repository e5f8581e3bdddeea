"""Hot-path text of readings: ``iso_utc`` and JSON strings must equal the library output."""

from __future__ import annotations

import random
from collections import OrderedDict
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.model import _to_json_any, iso_utc, loads_exact, parse_iso, to_json


def reference(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_iso_utc_matches_datetime_on_random_and_boundary_times() -> None:
    rng = random.Random(645)
    times = [1.7e9 + rng.random() * 1e8 for _ in range(20_000)]
    times += [1_764_300_000 + k / 1000 for k in range(2_000)]          # every millisecond of 2 s
    times += [1_764_300_000 + k / 1000 + 0.0004995 for k in range(1_000)]  # next to a rounding edge
    times += [0.0, 0.0005, 0.9999995, 999_999_999.9999995, -1.5, -0.0000004, 4_102_444_800.25]
    bad = [(t, iso_utc(t), reference(t)) for t in times if iso_utc(t) != reference(t)]
    assert bad == []


def test_iso_utc_round_trips_through_parse_iso_to_the_millisecond() -> None:
    for t in (1_764_300_000.123, 1_764_345_599.999, 1_767_225_600.0):
        assert abs(parse_iso(iso_utc(t)) - t) < 0.0005
    assert iso_utc(1_767_225_600.0) == "2026-01-01T00:00:00.000Z"


def test_json_strings_are_escaped_exactly_as_json_dumps() -> None:
    import json

    from gateway.model import _json_str

    for text in ["m1", 'a"b', "back\\slash", "ünï ₤", "\n\t\x01", "\u2028 😀", "x" * 100, ""]:
        assert _json_str(text) == json.dumps(text, ensure_ascii=False)
        assert _json_str(text) == json.dumps(text, ensure_ascii=False)   # cached the same


class _Name(str):
    """A str subclass (an enum's value, say): written as its str, like any other value."""


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
    st.decimals(allow_nan=True, allow_infinity=True), st.text(max_size=4).map(_Name),
)
_documents = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=6), inner, max_size=4),
        st.dictionaries(st.text(max_size=6), inner, max_size=4).map(OrderedDict),
    ),
    max_leaves=20,
)


@settings(max_examples=400)
@given(doc=_documents)
def test_to_json_by_type_is_the_general_path_text_for_text(doc: object) -> None:
    """to_json takes the exact built-in types first; every value, subclasses and non-finite
    numbers included, must come out as the general (isinstance) path writes it, and parse."""
    text = to_json(doc)
    assert text == _to_json_any(doc)
    loads_exact(text)
