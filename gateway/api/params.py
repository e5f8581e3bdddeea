"""Query-parameter parsing for the API: every bad value becomes a 400 with a sentence."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from gateway.slots import zone

MAX_RANGE_DAYS = 400


class BadRequest(web.HTTPBadRequest):
    """A 400 whose JSON body says what to change."""

    def __init__(self, message: str) -> None:
        super().__init__(text=f'{{"error": {_json_str(message)}}}', content_type="application/json")


def _json_str(s: str) -> str:
    import json

    return json.dumps(s, ensure_ascii=False)


def parse_time(value: str, name: str, tz: str) -> float:
    """Parse an ISO-8601 time (a date alone means local midnight; no offset means local time)."""
    text = value.strip()
    if "T" in text:
        text = text.replace(" ", "+")  # a '+' in a query string arrives as a space
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"'{name}' must be an ISO-8601 time such as 2026-11-01T00:00:00+08:00 or 2026-11-01, "
            f"not {value!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone(tz))
    return dt.timestamp()


def time_range(request: web.Request, tz: str, now: float, default_s: float = 86400.0) -> tuple[float, float]:
    """``from``/``to`` of a request, validated: from < to, at most 400 days apart."""
    q = request.query
    end = parse_time(q["to"], "to", tz) if "to" in q else now
    start = parse_time(q["from"], "from", tz) if "from" in q else end - default_s
    if start >= end:
        raise BadRequest("'from' must be earlier than 'to'")
    if end - start > MAX_RANGE_DAYS * 86400:
        raise BadRequest(f"the time range may span at most {MAX_RANGE_DAYS} days; ask for less")
    return start, end


def int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within [lo, hi]."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadRequest(f"'{name}' must be a whole number, not {raw!r}") from None
    if not lo <= v <= hi:
        raise BadRequest(f"'{name}' must be between {lo} and {hi}, not {v}")
    return v


def output_format(request: web.Request) -> str:
    """``json`` (default) or ``csv``."""
    fmt = request.query.get("format", "json").lower()
    if fmt not in ("json", "csv"):
        raise BadRequest(f"'format' must be json or csv, not {fmt!r}")
    return fmt
