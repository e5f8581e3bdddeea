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

import contextlib
import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from json.encoder import encode_basestring
from operator import attrgetter
from typing import Any, Final, TypeVar, cast

from gateway.identity_memo import IdentityMemo
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
_SAME: Final = "="       # a point's value is its raw value
_SHAPES_KEPT: Final = 4096
_ONE: Final = Decimal(1)
_ONE_TEXT: Final = "1"
_PLAIN_POINTS: Final = re.compile(r"-?[0-9]++(?:\.[0-9]++)?+(?:\x1e-?[0-9]++(?:\.[0-9]++)?+)*+")
"""A body whose every point is a plain decimal number, good, without reason or tail: the
usual reading. Possessive (``++``, ``?+``, ``*+``): this language never needs backtracking,
and without it the one match over a whole body costs as much as a match per point."""

_P = TypeVar("_P", str, tuple[str, ...])

ShapeKey = tuple[str, str, str, str, str, str, str, tuple[str, ...], tuple[str, ...]]
"""(gateway, meter, customer, bus, schedule, CT text, PT text, point names, units): what a
shape holds. The factors are kept as the text the message states them with (``1`` and
``1.0`` are equal Decimals but different text)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """A reading shape with the text fragments :func:`render` joins values into."""

    id: int
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
    marks: tuple[str, ...]
    """Per point, how its value is usually kept (``=`` same as raw, or a factor mark): the
    mark of the reading that made the shape; a point that differs says so in its body."""
    tags: tuple[tuple[str, str], ...] = ()
    """``(bus, …), (customer, …), (gateway, …), (meter, …), (schedule, …)``, sorted by key:
    what an InfluxDB line of such a reading is tagged with (:mod:`gateway.sinks.lineproto`)."""
    scaled: tuple[tuple[int, Decimal], ...] | None = None
    """(index, factor) of each point whose usual value is its raw value × a factor; None
    (the default) when the fast paths for plain bodies (:func:`plain_values`) may not be
    taken, e.g. a mark that is no factor's."""
    plain_parts: tuple[str, ...] | None = None
    """The message of a plain body (:func:`plain_values`) in pieces, with an empty gap at
    1, 2, 3, 5, 7 for seq, :attr:`middle`, slot, ts and quality and, from :data:`_PLAIN_FIRST`
    on, every 5th for a point's raw text and 2 later its value's, which :func:`render` fills
    in and joins (a join of a list is cheaper than a template or an f-string per point).
    Without the meter's own text, so the meters of a profile share one tuple. None: the
    general path."""
    sink_memo: list[Any] = field(default_factory=list, compare=False, repr=False)
    """What a sink works out once for this shape and keeps with it (the InfluxDB line's
    measurement, tags and keys: :mod:`gateway.sinks.lineproto`), so it lives exactly as long
    as the shape instead of in a cache keyed by the shape's text."""


_FACTOR_TEXTS: IdentityMemo[Decimal, str] = IdentityMemo(_SHAPES_KEPT)
"""factor → its JSON text: a meter's readings all carry its builder's own CT and PT
Decimals, so the text is written once per meter, not per reading; equal Decimals are not
merged (``1`` and ``1.0`` are equal but are written differently)."""
_unit_of: Final = attrgetter("unit")


def _factor_text(factor: Decimal) -> str:
    """``json_number(factor)``, remembered for this very object (see :data:`_FACTOR_TEXTS`)."""
    got = _FACTOR_TEXTS.get(factor)
    return got if got is not None else _FACTOR_TEXTS.put(factor, json_number(factor))


def shape_key(r: Reading, gateway: str) -> ShapeKey:
    """What makes two readings share a shape."""
    pts = r.points
    ct, pt = r.ct, r.pt
    return (gateway, r.meter, r.customer, r.bus, r.schedule,
            _ONE_TEXT if ct is _ONE else _factor_text(ct), _ONE_TEXT if pt is _ONE else _factor_text(pt),
            tuple(pts), tuple(map(_unit_of, pts.values())))


def spec_of(key: ShapeKey, marks: tuple[str, ...]) -> str:
    """The ``reading_shape.spec`` text of a shape (JSON: stable, readable with sqlite3)."""
    gateway, meter, customer, bus, schedule, ct, pt, names, units = key
    return json.dumps({"v": 1, "gateway": gateway, "meter": meter, "customer": customer, "bus": bus,
                       "schedule": schedule, "ct": ct, "pt": pt,
                       "points": [[n, u, m] for n, u, m in zip(names, units, marks, strict=True)]},
                      ensure_ascii=False, separators=(",", ":"))


def insert_shapes(conn: sqlite3.Connection, shapes: dict[ShapeKey, Shape]) -> None:
    """Store new shapes (their spec written from the key and the shape's marks: the text they
    were made from) in the caller's transaction."""
    if shapes:
        conn.executemany("INSERT INTO reading_shape(id, spec) VALUES (?, ?)",
                         [(s.id, spec_of(k, s.marks)) for k, s in shapes.items()])


@lru_cache(maxsize=_SHAPES_KEPT)
def factors_of(ct_text: str, pt_text: str) -> dict[str, Decimal]:
    """The factor of each value mark under these CT and PT texts: one dict for each pair of
    texts, shared by every shape under them (a site has a handful of CT/PT ratios and
    thousands of meters), so callers must not change it."""
    ct, pt = Decimal(ct_text), Decimal(pt_text)
    return {"*": ct * pt, "c": ct, "p": pt}


@lru_cache(maxsize=_SHAPES_KEPT)
def _scaled_of(ct_text: str, pt_text: str, marks: tuple[str, ...]) -> tuple[tuple[int, Decimal], ...]:
    """:attr:`Shape.scaled` for these factor texts and marks, one tuple shared by every
    shape with them (keyed by the texts, not by the factors: ``1`` and ``1.0`` are equal
    Decimals that scale to different text)."""
    factors = factors_of(ct_text, pt_text)
    return tuple((k, factors[m]) for k, m in enumerate(marks) if m != _SAME)


def shared_key(key: ShapeKey) -> ShapeKey:
    """``key`` with its point names and units shared with every other kept key that has the
    same (a store keeps one key per shape, and the meters of a profile all have the same)."""
    return (*key[:7], _shared(key[7]), _shared(key[8]))


def marks_of(r: Reading, factors: dict[str, Decimal]) -> tuple[str, ...]:
    """How each point's value of ``r`` relates to its raw value (a shape's default marks)."""
    out = []
    for p in r.points.values():
        if p.value is p.raw:
            out.append(_SAME)
            continue
        raw_text = "null" if p.raw is None else json_number(p.raw)
        mark = _value_mark(raw_text, json_number(p.value), factors)
        out.append(mark if mark in factors or mark == _SAME else _SAME)
    return tuple(out)


def key_of_spec(spec: str) -> ShapeKey:
    """The :data:`ShapeKey` a stored spec was made from."""
    d = json.loads(spec)
    pts = d["points"]
    return (str(d["gateway"]), str(d["meter"]), str(d["customer"]), str(d["bus"]), str(d["schedule"]),
            str(d["ct"]), str(d["pt"]), tuple(str(p[0]) for p in pts), tuple(str(p[1]) for p in pts))


_SHARED: dict[Any, Any] = {}
"""Equal pieces of different shapes, kept once: the meters of one profile have the same
point names, units, marks and text pieces, and a thousand shapes holding their own copies
took a megabyte or more of the gateway's resident memory (the TCP fleet bench's 80 MB)."""


def _shared(piece: _P) -> _P:
    """The one kept object equal to ``piece`` (a string or a tuple of them)."""
    got = _SHARED.get(piece)
    if got is None:
        if len(_SHARED) >= 16 * _SHAPES_KEPT:    # bounded; a cleared entry is only shared less
            _SHARED.clear()
        got = _SHARED[piece] = piece
    return cast(_P, got)


def shape_from_spec(shape_id: int, spec: str) -> Shape:
    """Build the rendering fragments of a stored shape."""
    d = json.loads(spec)
    js = encode_basestring
    ct_text, pt_text = str(d["ct"]), str(d["pt"])
    names = _shared(tuple(_shared(str(p[0])) for p in d["points"]))
    factors = factors_of(ct_text, pt_text)
    marks = _shared(tuple(_shared(str(p[2])) for p in d["points"]))
    head = _shared(f'{{"schema":"{READING_SCHEMA}","gateway":{js(d["gateway"])},"seq":')
    middle = (f',"meter":{js(d["meter"])},"customer":{js(d["customer"])},"bus":{js(d["bus"])},'
              f'"schedule":{js(d["schedule"])},"slot":"')
    multiplier = _shared(f',"multiplier":{{"ct":{ct_text},"pt":{pt_text}}},"points":{{')
    openers = _shared(tuple(_shared(f'"{n}":{{"raw":') for n in names))
    units = _shared(tuple(_shared(f',"unit":{js(p[1])},"quality":"') for p in d["points"]))
    scaled: tuple[tuple[int, Decimal], ...] | None = None
    plain = None
    if all(m == _SAME or m in factors for m in marks):
        scaled = _scaled_of(ct_text, pt_text, marks)
        plain = _plain_parts(head, multiplier, openers, units)
    return Shape(
        id=shape_id, names=names, head=head, middle=middle, multiplier=multiplier,
        openers=openers, units=units, factors=factors, marks=marks,
        tags=tuple(cast(tuple[str, str], _shared((k, str(d[k])))) if k in _COMMON_TAGS else (k, str(d[k]))
                   for k in ("bus", "customer", "gateway", "meter", "schedule")),
        scaled=scaled, plain_parts=plain,
    )


_COMMON_TAGS: Final = frozenset({"gateway", "schedule"})
"""Tags whose (key, value) pair most shapes share (the bus, customer and meter are each
shape's own: sharing them would only fill :data:`_SHARED`)."""

_PLAIN_FIRST: Final = 10
"""Where the first point's raw text sits in :attr:`Shape.plain_parts` (then every 5th)."""


def _plain_parts(head: str, multiplier: str, openers: tuple[str, ...], units: tuple[str, ...]) -> tuple[str, ...]:
    """:attr:`Shape.plain_parts`: the text of a plain body's message with a gap ("") for
    seq, the meter's middle, slot, ts and quality and for each point's raw and value text."""
    parts = [head, "", "", "", '","ts":"', "", '","quality":"', "", _shared('"' + multiplier)]
    last = len(openers) - 1
    for k, (o, u) in enumerate(zip(openers, units, strict=True)):
        parts += [o, "", ',"value":', "", _shared(f'{u}good"}}' + ("," if k < last else "}}"))]
    return _shared(tuple(parts))


def _value_mark(raw_text: str, value_text: str, factors: dict[str, Decimal]) -> str:
    """How a point's value text is kept: ``=`` (same as raw), a factor mark, or itself."""
    if value_text == raw_text:
        return _SAME
    if raw_text and raw_text[0] != '"' and raw_text not in ("null", "true", "false"):
        try:
            d = Decimal(raw_text)
        except InvalidOperation:
            return value_text
        for mark, f in factors.items():
            if json_number(d * f) == value_text:
                return mark
    return value_text


def _is_product(raw: Decimal, factor: Decimal, value: Decimal) -> bool:
    """Whether ``value`` is ``Decimal(json_number(raw)) × factor`` digit for digit: the cheap
    check for the common case (a Decimal raw value, no positive exponent, so its text reads
    back as the same Decimal)."""
    if not raw.is_finite():
        return False
    exponent = raw.as_tuple().exponent
    if not isinstance(exponent, int) or exponent > 0:
        return json_number(Decimal(json_number(raw)) * factor) == json_number(value)
    return (raw * factor).compare_total(value) == 0


def _tail(error_json: str, extra: str) -> str:
    return "" if not error_json and not extra else f"{_TAIL}{error_json}{_TAIL}{extra}"


def _plain_body(r: Reading) -> str | None:
    """The body of a reading whose every point is a good finite Decimal with its raw value
    as value and no reason (under a shape whose every mark is ``=``), without error or extra
    members — the usual reading — else None. One pass that gives up at the first other point
    is cheaper than :func:`encode`'s per-point questions."""
    if r.error is not None or r.extra:
        return None
    out: list[str] = []
    append = out.append
    for p in r.points.values():
        raw = p.raw
        if type(raw) is not Decimal or p.value is not raw or p.quality != "good" or p.reason is not None \
                or not raw.is_finite():
            return None
        append(str(raw))
    body = _PT.join(out)
    # str() is format(raw, "f") but for an exponent (four times cheaper); any exponent: the long way
    return None if "E" in body or "e" in body else body


def encode(r: Reading, shape: Shape) -> str:
    """The compact body of ``r`` (whose :func:`shape_key` is ``shape``'s)."""
    if shape.scaled == () and len(r.points) == len(shape.marks):     # every mark "="
        body = _plain_body(r)
        if body is not None:
            return body
    err = "" if r.error is None else encode_basestring(r.error)
    extra = ""
    if r.extra:
        extra = ",".join(f"{encode_basestring(k)}:{to_json(v)}" for k, v in r.extra.items())
    pts = r.points.values()
    first = next(iter(pts), None)
    if first is not None and first.quality != "good" and all(
            p.raw is None and p.value is None and p.reason is None and p.quality == first.quality for p in pts):
        return f"{_FAILED}{first.quality}{_tail(err, extra)}"
    out: list[str] = []
    append = out.append
    factors = shape.factors
    for p, default in zip(pts, shape.marks, strict=True):
        raw = p.raw
        value = p.value
        if type(raw) is Decimal and raw.is_finite():
            raw_text = str(raw)             # format(raw, "f")'s text unless it has an exponent,
            if "E" in raw_text or "e" in raw_text:   # and four times cheaper
                raw_text = format(raw, "f")
            if value is raw and default == _SAME and p.quality == "good" and p.reason is None:
                append(raw_text)     # the usual point, on the hot path: nothing else to say
                continue
        else:
            raw_text = "" if raw is None else json_number(raw)
        if value is raw:
            mark = "" if default == _SAME else _SAME
        elif default != _SAME and isinstance(value, Decimal) and isinstance(raw, Decimal) \
                and _is_product(raw, factors[default], value):
            mark = ""
        else:
            mark = _value_mark(raw_text or "null", json_number(value), factors)
            if mark == default:
                mark = ""
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


def _plain_items(shape: Shape, body: str) -> list[str] | None:
    """The raw text of each point of a plain body (every point a good plain decimal number
    whose value is its raw value or the shape's usual product, no error, no extra members),
    else None: the usual reading, which the fast paths of :func:`render` and
    :func:`plain_values` write without looking at each point's fields."""
    if shape.scaled is None or _PLAIN_POINTS.fullmatch(body) is None:
        return None
    items = body.split(_PT)
    return items if len(items) == len(shape.names) else None


def plain_values(shape: Shape, body: str) -> list[str] | None:
    """What :func:`good_values` gives for a plain body (see :func:`_plain_items`), each a
    plain decimal number (``-?[0-9]+(\\.[0-9]+)?``); None for any other body."""
    items = _plain_items(shape, body)
    if items is not None and shape.scaled:
        for k, factor in shape.scaled:
            items[k] = multiplied_text(items[k], factor)
    return items


def render(shape: Shape, seq: int, slot: float, ts: float, quality: str, body: str) -> str:
    """The ``amr.reading.v1`` text of a compact row: :func:`gateway.model.reading_payload`'s."""
    plain = shape.plain_parts
    if plain is not None:
        items = _plain_items(shape, body)
        if items is not None:
            out = list(plain)
            out[1] = str(seq)
            out[2] = shape.middle
            out[3] = iso_utc(slot)
            out[5] = iso_utc(ts)
            out[7] = quality
            out[_PLAIN_FIRST::5] = items
            out[_PLAIN_FIRST + 2::5] = items
            for k, factor in shape.scaled or ():
                out[_PLAIN_FIRST + 2 + 5 * k] = multiplied_text(items[k], factor)
            return "".join(out)
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
        for o, u, default, item in zip(openers, units, shape.marks, points.split(_PT), strict=True):
            if _FLD not in item:
                raw = item or "null"
                value = raw if default == _SAME else multiplied_text(raw, factors[default])
                parts.append(f'{o}{raw},"value":{value}{u}good"}}')
                continue
            fields = item.split(_FLD)
            raw = fields[0] or "null"
            mark = fields[1] or default
            if mark == _SAME:
                value = raw
            elif mark in factors:
                value = multiplied_text(raw, factors[mark])
            else:
                value = mark
            q = fields[2] if len(fields) > 2 and fields[2] else "good"
            reason = f',"reason":{fields[3]}' if len(fields) > 3 else ""
            parts.append(f'{o}{raw},"value":{value}{u}{q}"{reason}}}')
    return (f'{shape.head}{seq}{shape.middle}{iso_utc(slot)}","ts":"{iso_utc(ts)}","quality":"{quality}"'
            f'{err}{shape.multiplier}{",".join(parts)}}}{extra}}}')


def good_values(shape: Shape, body: str) -> list[str | None]:
    """Per point of a compact row, in the shape's order: the JSON text :func:`render` writes
    as its ``"value"`` when the point's quality is ``good`` and the value is not null, else
    None — without writing the rest of the message (an InfluxDB line needs no more)."""
    points = body.partition(_TAIL)[0]
    if points.startswith(_FAILED) or not shape.openers:
        return [None] * len(shape.openers)
    factors = shape.factors
    out: list[str | None] = []
    append = out.append
    for default, item in zip(shape.marks, points.split(_PT), strict=True):
        if _FLD not in item:
            if not item:
                append(None)
            elif default == _SAME:
                append(item)
            else:
                append(multiplied_text(item, factors[default]))
            continue
        fields = item.split(_FLD, 3)
        if len(fields) > 2 and fields[2]:
            append(None)            # its quality is not good
            continue
        text = value_text(item, default, factors)
        append(None if text == "null" else text)
    return out


_BY_SPEC: dict[str, Shape] = {}
_RENDERED: dict[tuple[str, str, int, float, float, str], str] = {}
_RENDERED_KEPT: Final = 4096
"""Messages :func:`_udf` keeps (about 5 MB): API clients pulling the same meter-day get the
text already rendered instead of rendering 1,440 readings each on the API's threads."""


def _udf(payload: str, spec: str | None, seq: int, slot: float, ts: float, quality: str) -> str:
    if spec is None:
        return payload
    key = (spec, payload, seq, slot, ts, quality)
    text = _RENDERED.get(key)
    if text is not None:
        return text
    shape = _BY_SPEC.get(spec)
    if shape is None:
        if len(_BY_SPEC) >= _SHAPES_KEPT:
            _BY_SPEC.clear()
        shape = _BY_SPEC[spec] = shape_from_spec(0, spec)
    text = render(shape, seq, slot, ts, quality, payload)
    if len(_RENDERED) >= _RENDERED_KEPT:
        with contextlib.suppress(KeyError, StopIteration, RuntimeError):   # another thread trimmed it
            del _RENDERED[next(iter(_RENDERED))]
    _RENDERED[key] = text
    return text


def register(conn: sqlite3.Connection) -> sqlite3.Connection:
    """Teach ``conn`` the ``amr_payload`` function :data:`PAYLOAD_SQL` calls and the
    ``amr_points`` function :func:`points_sql` calls; returns ``conn``."""
    conn.create_function("amr_payload", 6, _udf, deterministic=True)
    conn.create_function("amr_points", 3, point_values_json, deterministic=True)
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


def compact_of_payload(payload: str, get_shape: Callable[[ShapeKey, tuple[str, ...]], Shape],
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
        factors = factors_of(key[5], key[6])
        marks = [_value_mark(_text(p["raw"]), _text(p["value"]), factors) for p in points.values()]
        shape = get_shape(key, tuple(m if m in factors or m == _SAME else _SAME for m in marks))
        out = []
        for p, mark, default in zip(points.values(), marks, shape.marks, strict=True):
            raw_text = _text(p["raw"])
            fields = ["" if raw_text == "null" else raw_text, "" if mark == default else mark,
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


# ---------------------------------------------------------------------- reading a few values in SQL
def points_sql(names_param: str) -> str:
    """SQL for a ``SELECT … FROM outbox``: a JSON text in which ``$.points."<name>".value`` is
    exactly what it is in the row's published text (:data:`PAYLOAD_SQL`), for the points named
    by ``names_param`` (an SQL parameter such as ``?7`` bound to a JSON array of point names).

    Why: the console's series takes one or a few numbers from each of a year of readings;
    rendering each whole message to ``json_extract`` one value from it cost most of a meter
    page's second. A compact row gives just those values (:func:`point_values_json`); a row
    kept verbatim (``shape`` NULL: a message a migration could not compact) is its own text.
    ``json_extract`` of either then gives the same SQL value. Needs :func:`register`.
    """
    return (f"CASE WHEN outbox.shape IS NULL THEN outbox.payload ELSE amr_points(outbox.payload, "
            f"(SELECT spec FROM reading_shape WHERE id=outbox.shape), {names_param}) END")


@dataclass(frozen=True, slots=True)
class _Pick:
    """Where the requested points sit in a shape's bodies, and the JSON keys to write them under."""

    shape: Shape
    picks: tuple[tuple[int, str], ...]
    """(index in the shape's points, ``"name":{"value":``) of each requested point the shape has."""


_PICKS: dict[tuple[str, str], _Pick] = {}


def _pick(spec: str, names_json: str) -> _Pick:
    got = _PICKS.get((spec, names_json))
    if got is None:
        shape = _BY_SPEC.get(spec)
        if shape is None:
            if len(_BY_SPEC) >= _SHAPES_KEPT:
                _BY_SPEC.clear()
            shape = _BY_SPEC[spec] = shape_from_spec(0, spec)
        index = {n: k for k, n in enumerate(shape.names)}
        wanted = [str(n) for n in json.loads(names_json)]
        picks = tuple((index[n], f'{encode_basestring(n)}:{{"value":') for n in dict.fromkeys(wanted) if n in index)
        if len(_PICKS) >= _SHAPES_KEPT:
            _PICKS.clear()
        got = _PICKS[(spec, names_json)] = _Pick(shape, picks)
    return got


def multiplied_text(raw: str, factor: Decimal) -> str:
    """The value text of a point kept as its raw text and a factor mark: raw × factor in
    plain notation, as :func:`render` writes every multiplied value."""
    return format(Decimal(raw) * factor, "f")


def value_text(item: str, default: str, factors: dict[str, Decimal]) -> str:
    """The JSON text of a point's ``value`` from its field of a compact body (not a failed
    read's), as :func:`render` writes it."""
    if _FLD not in item:
        raw = item or "null"
        return raw if default == _SAME else multiplied_text(raw, factors[default])
    fields = item.split(_FLD, 2)
    raw = fields[0] or "null"
    mark = fields[1] or default
    if mark == _SAME:
        return raw
    if mark in factors:
        return multiplied_text(raw, factors[mark])
    return mark


def point_values_json(payload: str, spec: str, names_json: str) -> str:
    """``{"points":{"<name>":{"value":…},…}}`` of a compact row: the value texts its published
    message holds for the requested points (a JSON array of names; those the shape lacks are
    left out, as they are absent from the message)."""
    pick = _pick(spec, names_json)
    if not pick.picks:
        return '{"points":{}}'
    points = payload.partition(_TAIL)[0]
    if points.startswith(_FAILED):
        return '{"points":{' + ",".join(f"{key}null}}" for _, key in pick.picks) + "}}"
    items = points.split(_PT)
    shape = pick.shape
    marks, factors = shape.marks, shape.factors
    parts = []
    for k, key in pick.picks:
        item = items[k]
        if marks[k] == _SAME and _FLD not in item:      # the usual point: its value is its raw text
            parts.append(f"{key}{item or 'null'}}}")
        else:
            parts.append(f"{key}{value_text(item, marks[k], factors)}}}")
    return '{"points":{' + ",".join(parts) + "}}"

