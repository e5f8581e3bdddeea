"""InfluxDB line protocol for committed messages: pure functions, no I/O, no foreign imports.

Why strings and not ``influxdb_client.Point``: building the line text directly is about
3.5× cheaper per reading, and the payload is already the committed JSON, so one parse and
one format per row is all the hot path does.

What a reading becomes (one line per reading)::

    amr_reading,bus=rs485-1,customer=C0001,gateway=sub-east,meter=c0001-main,schedule=interval \\
        energy_import_kwh=12345.67,power_kw=88.1,seq=4711i 1767225600123

* **measurement**: :func:`measurement_for` — ``InfluxSettings.measurement`` for readings
  (default ``amr_reading``); other kinds take the same stem with their kind:
  ``amr_settlement``, ``amr_event``, ``amr_kpi``.
* **tags**: ``gateway``, ``meter``, ``customer``, ``bus``, ``schedule`` (those present in
  the payload; an empty tag is left out, as line protocol requires), sorted by key as
  InfluxDB prefers. The schedule is a tag because a point is identified by measurement,
  tags and timestamp: two distinct readings of one meter at the same instant (the realtime
  and the interval schedule both due) must be two points, not one overwriting the other.
* **fields**: one float field per *good* point, named after the point, holding ``value``
  (after CT×PT) written with the digits the store committed. Points whose quality is not
  ``good`` are left out: a failed read is not a number, and a string field such as
  ``power_kw_quality="timeout"`` would be stored as the number 0 by VictoriaMetrics and
  other Prometheus-style servers. The failure itself is in the store, on MQTT and in the
  API. Non-numeric values (text) are left out for the same reason. ``seq`` is always
  written as an integer field, so every poll leaves a point and consumers can join the
  TSDB with MQTT on (gateway, seq). A replay writes the identical line again (same tags,
  timestamp, fields and seq): it rewrites the point with itself, harmlessly.
* **timestamp**: the read time ``ts`` in milliseconds (write precision ``ms``); the payload
  carries ts to the millisecond, so nothing is lost and a replayed point overwrites itself.

Settlements, events and KPIs (schemas owned by other modules) are flattened generically:
numeric leaves of nested objects become float fields named by their path joined with
``_`` (``stage_consumption_energy_import_kwh``), booleans and text are left out, and the
same four tags apply where the document has them.

Escaping: in measurements, tag keys, tag values and field keys, comma, space (and ``=``
outside measurements) are backslash-escaped, newline, tab and carriage return are written
as ``\\n``, ``\\t``, ``\\r``, and a backslash itself is doubled. InfluxDB's parser reads
two backslashes as one literal backslash (so does VictoriaMetrics, checked against it);
influxdb-client's ``Point`` leaves backslashes alone, which turns a value such as
``C:\\ x`` into an escaped space, or a trailing backslash into an escaped separator.
"""

from __future__ import annotations

import json
import math
import re
from decimal import Decimal
from functools import lru_cache
from typing import Final

from gateway.model import Reading, json_number
from gateway.storecodec import Shape, good_values, plain_values

TAG_KEYS: Final = ("bus", "customer", "gateway", "meter", "schedule")   # sorted: InfluxDB's preferred order
_SKIP_GENERIC: Final = frozenset({"schema", "gateway", "seq", "meter", "customer", "bus", "schedule", "ts",
                                  "slot"})
_MAX_DEPTH: Final = 4

_ESCAPE_MEASUREMENT: Final = str.maketrans(
    {"\\": "\\\\", ",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_ESCAPE_KEY: Final = str.maketrans(
    {"\\": "\\\\", ",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"}
)
_PLAIN_NUMBER: Final = re.compile(r"-?\d+(\.\d+)?")


class LineError(ValueError):
    """A committed payload cannot be turned into a line (not JSON, not an object)."""


_CACHE_LIMIT: Final = 65_536
_MEMO_PER_SHAPE: Final = 8
"""Measurements whose line parts a shape keeps (one per InfluxDB sink; beyond, worked out each time)."""
_escaped_keys: dict[str, str] = {}
_escaped_measurements: dict[str, str] = {}


def _escape_cached(text: str, table: dict[int, str], cache: dict[str, str]) -> str:
    """``text.translate(table)``, remembered: the same few thousand meter, customer, bus and
    point names recur in every line, and a translate costs about thirty dict lookups."""
    try:
        return cache[text]
    except KeyError:
        pass
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()            # bounded: a churn of one-off names cannot grow it for ever
    escaped = text.translate(table)
    if escaped == text:
        escaped = text           # the usual name needs no escape: keep no second copy of it
    cache[text] = escaped
    return escaped


def escape_measurement(name: str) -> str:
    """Escape a measurement name for line protocol."""
    return _escape_cached(name, _ESCAPE_MEASUREMENT, _escaped_measurements)


def escape_key(key: str) -> str:
    """Escape a tag key or field key for line protocol."""
    return _escape_cached(key, _ESCAPE_KEY, _escaped_keys)


def escape_tag_value(value: str) -> str:
    """Escape a tag value (same rules as keys: a trailing backslash is doubled, never bare)."""
    return _escape_cached(value, _ESCAPE_KEY, _escaped_keys)


def measurement_for(base: str, kind: str) -> str:
    """The measurement for a message kind: ``base`` for readings, ``<stem>_<kind>`` otherwise.

    ``amr_reading`` → ``amr_settlement`` / ``amr_event`` / ``amr_kpi``; a base that does not
    end in ``_reading`` (``meters``) gives ``meters`` for readings and ``meters_<kind>`` else.
    """
    if kind == "reading":
        return base
    stem = base[: -len("_reading")] if base.endswith("_reading") else base
    return f"{stem}_{kind}"


def number_text(raw: str) -> str | None:
    """A JSON number's text as a line-protocol float, or None when it is not finite.

    Plain decimals are passed through digit for digit (exactly what was committed);
    exponent forms go through ``float``.
    """
    # the usual text, a plain decimal, tested without the regex: isdecimal() is the regex's
    # \d (Unicode category Nd) on every character; anything else takes the regex as before
    whole, dot, frac = (raw[1:] if raw[:1] == "-" else raw).partition(".")
    if whole.isdecimal() and (not dot or frac.isdecimal()):
        return raw
    return number_text_by_regex(raw)


def number_text_by_regex(raw: str) -> str | None:
    """:func:`number_text` without its fast test of a plain decimal: the regex for every
    text (what it was before that test; its tests hold the two to the same answers)."""
    if _PLAIN_NUMBER.fullmatch(raw):
        return raw
    try:
        f = float(raw)
    except ValueError:
        return None
    if math.isnan(f) or math.isinf(f):
        return None
    return repr(f)


def _tags(doc: dict[str, object], meter: str | None) -> str:
    out = []
    for key in TAG_KEYS:
        v = doc.get(key)
        if key == "meter" and not isinstance(v, str):
            v = meter
        if isinstance(v, str) and v:
            out.append(f",{key}={escape_tag_value(v)}")
    return "".join(out)


class _Num(str):
    """A JSON number kept as its exact text (so strings and numbers stay apart)."""

    __slots__ = ()


def _loads_typed(payload: str) -> dict[str, object]:
    try:
        doc = json.loads(payload, parse_float=_Num, parse_int=_Num)
    except ValueError as exc:
        raise LineError(f"payload is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise LineError("payload is not a JSON object")
    return doc


def _numeric_leaves(prefix: str, value: object, depth: int, out: dict[str, str]) -> None:
    if isinstance(value, _Num):
        text = number_text(value)
        if text is not None and prefix:
            out[prefix] = text
    elif isinstance(value, dict) and depth < _MAX_DEPTH:
        for k, v in value.items():
            if depth == 0 and k in _SKIP_GENERIC:
                continue
            _numeric_leaves(f"{prefix}_{k}" if prefix else str(k), v, depth + 1, out)


def _seq_of(doc: dict[str, object], fallback: int) -> int:
    v = doc.get("seq")
    if isinstance(v, _Num) and v.isdigit():
        return int(v)
    return fallback


def row_line(measurement_base: str, kind: str, meter: str | None, ts: float, payload: str, seq: int) -> str:
    """One committed message as one line of line protocol (see the module docstring).

    Raises :class:`LineError` when the payload is not a JSON object.
    """
    doc = _loads_typed(payload)
    meas = escape_measurement(measurement_for(measurement_base, kind))
    fields: list[str] = []
    if kind == "reading":
        points = doc.get("points")
        if isinstance(points, dict):
            for name, p in points.items():
                if not isinstance(p, dict) or p.get("quality") != "good":
                    continue
                v = p.get("value")
                if isinstance(v, _Num):
                    text = number_text(v)
                    if text is not None:
                        fields.append(f"{escape_key(str(name))}={text}")
    else:
        leaves: dict[str, str] = {}
        _numeric_leaves("", doc, 0, leaves)
        fields.extend(f"{escape_key(k)}={v}" for k, v in leaves.items())
    fields.append(f"seq={_seq_of(doc, seq)}i")
    ts_ms = round(ts * 1000)
    return f"{meas}{_tags(doc, meter)} {','.join(fields)} {ts_ms}"


def reading_line(measurement_base: str, gateway: str, r: Reading, seq: int) -> str:
    """The line :func:`row_line` makes of ``reading_payload(r, gateway, seq)``, from the
    reading itself: the same text, character for character, without writing and parsing
    the JSON again (the reference :func:`compact_line` is held to in the tests)."""
    tags = "".join(
        f",{key}={escape_tag_value(v)}"
        for key, v in (("bus", r.bus), ("customer", r.customer), ("gateway", gateway), ("meter", r.meter),
                       ("schedule", r.schedule)) if v
    )
    fields: list[str] = []
    for name, p in r.points.items():
        v = p.value
        if p.quality != "good" or not isinstance(v, Decimal | int | float) or isinstance(v, bool):
            continue
        text = number_text(json_number(v))
        if text is not None:
            fields.append(f"{escape_key(name)}={text}")
    fields.append(f"seq={seq}i")
    return f"{escape_measurement(measurement_base)}{tags} {','.join(fields)} {round(r.ts * 1000)}"


def _line_parts(measurement_base: str, shape: Shape) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """The measurement and tags, each field's ``key=``, and the fields of a plain body
    (:func:`~gateway.storecodec.plain_values`) in pieces, the measurement and tags first,
    with a gap ("") after each ``key=`` for its value: a shape's parts of its lines,
    joined once and kept with the shape (``Shape.sink_memo``: a ``(measurement, parts)``
    pair for each InfluxDB sink's measurement; a pair is only ever appended, whole, so a
    sink on another thread never sees one half-made)."""
    memo = shape.sink_memo
    for base, parts in memo:
        if base == measurement_base:
            return parts  # type: ignore[no-any-return]   # sink_memo is list[Any]
    tags = "".join(f",{k}={escape_tag_value(v)}" for k, v in shape.tags if v)
    head = f"{escape_measurement(measurement_base)}{tags} "
    keys, later = _field_pieces(shape.names)
    plain: list[str] = [head + keys[0], ""] if keys else []
    plain += later
    made = (head, keys, tuple(plain))
    if len(memo) < _MEMO_PER_SHAPE:
        memo.append((measurement_base, made))
    return made


@lru_cache(maxsize=4096)
def _field_pieces(names: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Each point's ``key=``, and ``,key=`` with a gap after it for every field after the
    first: one pair of tuples for every shape with these point names (the meters of a
    profile share them; 10,000 meters' own copies took 7 MB)."""
    keys = tuple(f"{escape_key(n)}=" for n in names)
    later: list[str] = []
    for key in keys[1:]:
        later += ["," + key, ""]
    return keys, tuple(later)


def compact_line(measurement_base: str, shape: Shape, seq: int, ts: float, body: str) -> str:
    """The line :func:`row_line` makes of a compact stored reading's message, from its stored
    values (:mod:`gateway.storecodec`): the same text, character for character, without
    rendering the JSON message and parsing it again. The measurement, tags and field keys
    are joined once per shape and kept (bounded)."""
    head, keys, pieces = _line_parts(measurement_base, shape)
    plain = plain_values(shape, body)
    if plain is not None:
        # the usual reading: every point good and a plain decimal, which number_text
        # passes through as it is, so the values go straight into the gaps of the pieces
        out = list(pieces)
        out[1::2] = plain
        return "".join(out) + f",seq={seq}i {round(ts * 1000)}"
    fields = []
    for key, value in zip(keys, good_values(shape, body), strict=True):
        if value is not None:
            text = number_text(value)
            if text is not None:
                fields.append(key + text)
    fields.append(f"seq={seq}i")
    return f"{head}{','.join(fields)} {round(ts * 1000)}"
