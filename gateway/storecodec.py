"""The compact form of a stored reading (store schema 2) and the ``amr.reading.v1`` text
rendered back from it, byte for byte.

Why: the store used to keep every reading as its full JSON message, about 2 KB for a
15-point profile — 2.9 MB per meter-day at 1-minute realtime (issue 16 item 10). Nearly
all of that text repeats from one reading of a meter to the next: the gateway, meter,
customer, bus and schedule names, the CT/PT factors, every point's name, unit and
``"quality":"good"``. A *shape* (table ``reading_shape``, one row per distinct
combination, a few per meter) keeps that text once; a reading keeps only its shape's id
(``outbox.shape``) and, in ``outbox.payload``, the JSON text of each point's value.

The body (``outbox.payload`` of a reading whose ``shape`` is set), in the shape's point order::

    point[\\x1e point ...][\\x1d error_json \\x1d extra]      or      \\x1c quality[\\x1d error_json \\x1d extra]

* ``point`` = ``raw[\\x1f value[\\x1f quality[\\x1f reason_json]]]`` with trailing empty fields
  left out. ``raw`` is the JSON text of the raw value (empty for ``null``). ``value`` is
  empty when its text equals ``raw``'s, ``*`` / ``c`` / ``p`` when it is
  ``Decimal(raw) × CT × PT`` / ``× CT`` / ``× PT`` with the shape's factors (checked when it
  is encoded: the text must come out the same), otherwise the JSON text itself. ``quality``
  is empty for ``good``.
* ``\\x1c quality``: every point is null with that quality and no reason (a failed read).
* ``error_json`` is the reading's ``error`` as JSON text (empty: none); ``extra`` the text
  of its extra members (``"billing":{…}``), exactly as :func:`gateway.model.reading_payload`
  writes them.

The separators are control characters, which JSON text never holds unescaped, so no value
needs escaping. The time stamps, ``seq`` and the overall quality are the row's own columns.
:func:`render` gives the same text as :func:`gateway.model.reading_payload` for the same
reading (tests/unit/test_storecodec.py checks it over many generated readings).

Every SQLite connection that reads reading payloads registers :func:`register` (the store's
own connections and the API's read pool do) and selects :data:`PAYLOAD_SQL` instead of the
``payload`` column: it renders a compact row and passes any other row (settlements,
events, KPIs, readings a migration kept verbatim) through unchanged.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from json.encoder import encode_basestring
from typing import Any, Final

from gateway.model import READING_SCHEMA, Reading, iso_utc, json_number, to_json

PAYLOAD_SQL: Final = ("amr_payload(outbox.payload, (SELECT spec FROM reading_shape WHERE id=outbox.shape), "
                      "outbox.seq, outbox.slot, outbox.ts, outbox.quality)")
"""The published JSON text of an outbox row, for a ``SELECT … FROM outbox``: what
``payload`` held verbatim before schema 2. Needs :func:`register` on the connection."""

SHAPE_DDL: Final = "CREATE TABLE IF NOT EXISTS reading_shape (id INTEGER PRIMARY KEY, spec TEXT NOT NULL UNIQUE)"
"""The shapes: everything of a reading that repeats from one reading of a meter to the next."""

_PT: Final = "\x1e"    # between points
_FLD: Final = "\x1f"   # between a point's fields
_TAIL: Final = "\x1d"  # before the error and the extra members
_FAILED: Final = "\x1c"  # a failed read: every point null with one quality
_SHAPES_KEPT: Final = 4096

ShapeKey = tuple[str, str, str, str, str, str, str, tuple[str, ...], tuple[str, ...]]
"""(gateway, meter, customer, bus, schedule, CT text, PT text, point names, units): what a
shape holds. The factors are kept as the text the message states them with (``1`` and
``1.0`` are equal Decimals but different text)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """A reading shape with the text fragments :func:`render` joins values into."""

    id: int
    spec: str
    names: tuple[str, ...]
    head: str
    """``{"schema":…,"gateway":…,"seq":``"""
    middle: str
    """``,"meter":…,"schedule":…,"slot":"``"""
    multiplier: str
    """``,"multiplier":{"ct":…,"pt":…},"points":{``"""
    openers: tuple[str, ...]
    """Per point: ``"name":{"raw":``"""
    units: tuple[str, ...]
    """Per point: ``,"unit":…,"quality":"``"""
    factors: dict[str, Decimal]
    """``*``, ``c``, ``p``: CT × PT, CT, PT as the rendered multiplier states them."""


def shape_key(r: Reading, gateway: str) -> ShapeKey:
    """What makes two readings share a shape."""
    pts = r.points
    return (gateway, r.meter, r.customer, r.bus, r.schedule, json_number(r.ct), json_number(r.pt), tuple(pts),
            tuple(p.unit for p in pts.values()))


def spec_of(key: ShapeKey) -> str:
    """The ``reading_shape.spec`` text of a shape (JSON: stable, readable with sqlite3)."""
    gateway, meter, customer, bus, schedule, ct, pt, names, units = key
    return json.dumps({"v": 1, "gateway": gateway, "meter": meter, "customer": customer, "bus": bus,
                       "schedule": schedule, "ct": ct, "pt": pt,
                       "points": [[n, u] for n, u in zip(names, units, strict=True)]},
                      ensure_ascii=False, separators=(",", ":"))


def key_of_spec(spec: str) -> ShapeKey:
    """The :data:`ShapeKey` a stored spec was made from."""
    d = json.loads(spec)
    pts = d["points"]
    return (str(d["gateway"]), str(d["meter"]), str(d["customer"]), str(d["bus"]), str(d["schedule"]),
            str(d["ct"]), str(d["pt"]), tuple(str(n) for n, _ in pts), tuple(str(u) for _, u in pts))


def shape_from_spec(shape_id: int, spec: str) -> Shape:
    """Build the rendering fragments of a stored shape."""
    d = json.loads(spec)
    js = encode_basestring
    ct_text, pt_text = str(d["ct"]), str(d["pt"])
    names = tuple(str(n) for n, _ in d["points"])
    ct, pt = Decimal(ct_text), Decimal(pt_text)
    return Shape(
        id=shape_id, spec=spec, names=names,
        head=f'{{"schema":"{READING_SCHEMA}","gateway":{js(d["gateway"])},"seq":',
        middle=(f',"meter":{js(d["meter"])},"customer":{js(d["customer"])},"bus":{js(d["bus"])},'
                f'"schedule":{js(d["schedule"])},"slot":"'),
        multiplier=f',"multiplier":{{"ct":{ct_text},"pt":{pt_text}}},"points":{{',
        openers=tuple(f'"{n}":{{"raw":' for n in names),
        units=tuple(f',"unit":{js(u)},"quality":"' for _, u in d["points"]),
        factors={"*": ct * pt, "c": ct, "p": pt},
    )


def _value_mark(raw_text: str, value_text: str, factors: dict[str, Decimal]) -> str:
    """How a point's value text is kept: empty (same as raw), a factor mark, or itself."""
    if value_text == raw_text:
        return ""
    if raw_text and raw_text[0] != '"' and raw_text not in ("null", "true", "false"):
        try:
            d = Decimal(raw_text)
        except InvalidOperation:
            return value_text
        for mark, f in factors.items():
            if json_number(d * f) == value_text:
                return mark
    return value_text


def _tail(error_json: str, extra: str) -> str:
    return "" if not error_json and not extra else f"{_TAIL}{error_json}{_TAIL}{extra}"


def encode(r: Reading, shape: Shape) -> str:
    """The compact body of ``r`` (whose :func:`shape_key` is ``shape``'s)."""
    err = "" if r.error is None else encode_basestring(r.error)
    extra = ""
    if r.extra:
        extra = ",".join(f"{encode_basestring(k)}:{to_json(v)}" for k, v in r.extra.items())
    pts = r.points.values()
    first = next(iter(pts), None)
    if first is not None and first.quality != "good" and all(
            p.raw is None and p.value is None and p.reason is None and p.quality == first.quality for p in pts):
        return f"{_FAILED}{first.quality}{_tail(err, extra)}"
    out = []
    factors = shape.factors
    for p in pts:
        raw = p.raw
        raw_text = "" if raw is None else json_number(raw)
        if p.value is raw:
            mark = ""
        else:
            value_text = json_number(p.value)
            mark = _value_mark(raw_text or "null", value_text, factors)
        if p.reason is not None:
            q = "" if p.quality == "good" else p.quality
            out.append(f"{raw_text}{_FLD}{mark}{_FLD}{q}{_FLD}{encode_basestring(p.reason)}")
        elif p.quality != "good":
            out.append(f"{raw_text}{_FLD}{mark}{_FLD}{p.quality}")
        elif mark:
            out.append(f"{raw_text}{_FLD}{mark}")
        else:
            out.append(raw_text)
    return _PT.join(out) + _tail(err, extra)


def render(shape: Shape, seq: int, slot: float, ts: float, quality: str, body: str) -> str:
    """The ``amr.reading.v1`` text of a compact row: :func:`gateway.model.reading_payload`'s."""
    points, _, tail = body.partition(_TAIL)
    err = ""
    extra = ""
    if tail:
        err_json, _, extra_text = tail.partition(_TAIL)
        if err_json:
            err = ',"error":' + err_json
        if extra_text:
            extra = "," + extra_text
    openers, units = shape.openers, shape.units
    parts: list[str] = []
    if points.startswith(_FAILED):
        q = points[1:]
        parts = [f'{o}null,"value":null{u}{q}"}}' for o, u in zip(openers, units, strict=True)]
    elif openers:
        factors = shape.factors
        for o, u, item in zip(openers, units, points.split(_PT), strict=True):
            if _FLD not in item:
                raw = item or "null"
                parts.append(f'{o}{raw},"value":{raw}{u}good"}}')
                continue
            fields = item.split(_FLD)
            raw = fields[0] or "null"
            mark = fields[1]
            if not mark:
                value = raw
            elif mark in factors:
                value = json_number(Decimal(raw) * factors[mark])
            else:
                value = mark
            q = fields[2] if len(fields) > 2 and fields[2] else "good"
            reason = f',"reason":{fields[3]}' if len(fields) > 3 else ""
            parts.append(f'{o}{raw},"value":{value}{u}{q}"{reason}}}')
    return (f'{shape.head}{seq}{shape.middle}{iso_utc(slot)}","ts":"{iso_utc(ts)}","quality":"{quality}"'
            f'{err}{shape.multiplier}{",".join(parts)}}}{extra}}}')


_BY_SPEC: dict[str, Shape] = {}


def _udf(payload: str, spec: str | None, seq: int, slot: float, ts: float, quality: str) -> str:
    if spec is None:
        return payload
    shape = _BY_SPEC.get(spec)
    if shape is None:
        if len(_BY_SPEC) >= _SHAPES_KEPT:
            _BY_SPEC.clear()
        shape = _BY_SPEC[spec] = shape_from_spec(0, spec)
    return render(shape, seq, slot, ts, quality, payload)


def register(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Teach ``conn`` the ``amr_payload`` function :data:`PAYLOAD_SQL` calls; returns ``conn``."""
    conn.create_function("amr_payload", 6, _udf, deterministic=True)
    return conn


# ---------------------------------------------------------------------- migration (schema 1)
class _Num(str):
    """A JSON number kept as the exact text it was written with."""


def _text(v: Any) -> str:
    """The JSON text a parsed value was written with (numbers verbatim)."""
    if isinstance(v, _Num):
        return str.__str__(v)
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        return encode_basestring(v)
    if isinstance(v, list):
        return "[" + ",".join(_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{encode_basestring(k)}:{_text(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"unexpected JSON value {v!r}")


_HEAD_KEYS: Final = ("schema", "gateway", "seq", "meter", "customer", "bus", "schedule", "slot", "ts",
                     "quality")


def compact_of_payload(payload: str, get_shape: Callable[[ShapeKey], Shape],
                       seq: int, slot: float, ts: float, quality: str) -> tuple[Shape, str] | None:
    """The (shape, body) of a schema-1 reading payload, or None when its compact form would
    not render back to exactly ``payload`` (the row is then kept verbatim)."""
    try:
        doc = json.loads(payload, parse_float=_Num, parse_int=_Num)
        if not isinstance(doc, dict) or list(doc)[:len(_HEAD_KEYS)] != list(_HEAD_KEYS):
            return None
        rest = list(doc)[len(_HEAD_KEYS):]
        err: str | None = None
        if rest and rest[0] == "error":
            err = doc["error"]
            rest = rest[1:]
        if rest[:2] != ["multiplier", "points"]:
            return None
        mult, points = doc["multiplier"], doc["points"]
        if not isinstance(points, dict) or not isinstance(mult, dict) or list(mult) != ["ct", "pt"]:
            return None
        names = tuple(points)
        units = tuple(str(p["unit"]) for p in points.values())
        key: ShapeKey = (str(doc["gateway"]), str(doc["meter"]), str(doc["customer"]), str(doc["bus"]),
                         str(doc["schedule"]), _text(mult["ct"]), _text(mult["pt"]), names, units)
        shape = get_shape(key)
        out = []
        for p in points.values():
            raw_text = _text(p["raw"])
            mark = _value_mark(raw_text, _text(p["value"]), shape.factors)
            fields = ["" if raw_text == "null" else raw_text, mark,
                      "" if p["quality"] == "good" else str(p["quality"])]
            if "reason" in p:
                fields.append(_text(p["reason"]))
            while len(fields) > 1 and not fields[-1]:
                fields.pop()
            out.append(_FLD.join(fields))
        extra = ",".join(f"{encode_basestring(k)}:{_text(doc[k])}" for k in rest[2:])
        body = _PT.join(out) + _tail("" if err is None else _text(err), extra)
        if render(shape, seq, slot, ts, quality, body) != payload:
            return None
        return shape, body
    except (ValueError, TypeError, KeyError, AttributeError, InvalidOperation):
        return None
