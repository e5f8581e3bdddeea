"""``GET /api/v1/events``: review events (raised and cleared) with their evidence, JSON or CSV.

Events come from the review engine's own table (``review_event``, see
:mod:`gateway.review.db`), which holds exactly what was published on MQTT. Registered by the
composition root (:mod:`gateway.runtime`), which passes :func:`install_event_routes` to
:class:`gateway.api.server.ApiServer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.api.openapi import FORMAT, error_responses, json_or_csv
from gateway.api.params import MAX_RANGE_DAYS, BadRequest, int_param, output_format, parse_time
from gateway.api.server import csv_response, json_response
from gateway.model import iso_utc
from gateway.review import db
from gateway.review.rules import EVENT_TYPES

if TYPE_CHECKING:
    from gateway.api.server import ApiServer

DEFAULT_SPAN_S: Final = 30 * 86400.0
MAX_LIMIT: Final = 100_000


def _time_param(request: web.Request, name: str, alias: str, tz: str) -> float | None:
    q = request.query
    if name in q and alias in q:
        raise BadRequest(f"give '{name}' or '{alias}', not both")
    key = name if name in q else alias if alias in q else None
    return None if key is None else parse_time(q[key], key, tz)


def event_query(request: web.Request, tz: str, now: float) -> dict[str, Any]:
    """Validate the query parameters of ``/api/v1/events`` (every problem is a 400 sentence)."""
    q = request.query
    until = _time_param(request, "until", "to", tz)
    since = _time_param(request, "since", "from", tz)
    end = until if until is not None else now + 1.0
    start = since if since is not None else end - DEFAULT_SPAN_S
    if start >= end:
        raise BadRequest("'since' must be earlier than 'until'")
    if end - start > MAX_RANGE_DAYS * 86400:
        raise BadRequest(f"the time range may span at most {MAX_RANGE_DAYS} days; ask for less")
    types: list[str] | None = None
    if q.get("type"):
        types = [t.strip() for t in q["type"].split(",") if t.strip()]
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown:
            raise BadRequest(f"'type' must be one or more (comma-separated) of {', '.join(EVENT_TYPES)}; "
                             f"{', '.join(repr(t) for t in unknown)} is not one")
    state = q.get("state")
    if state is not None and state not in ("raised", "cleared"):
        raise BadRequest(f"'state' must be raised or cleared, not {state!r}")
    after_id = int_param(request, "after_id", -1, 0, 2**62)
    return {
        "start": start,
        "end": end,
        "types": types,
        "state": state,
        "after_id": None if after_id < 0 else after_id,
        "limit": int_param(request, "limit", 10_000, 1, MAX_LIMIT),
    }


def install_event_routes(server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
    """Add ``GET /api/v1/events`` and return its OpenAPI ``paths`` entry."""
    gw = server.gateway

    async def events(request: web.Request) -> web.Response:
        fmt = output_format(request)
        meter: str | None = request.query.get("meter")
        args = event_query(request, gw.settings.gateway.timezone, gw.clock.time())
        if meter is not None:
            server.meter_or_404(meter)
        rows = await server.query(
            db.select_events, args["start"], args["end"], meter, args["types"], args["state"],
            args["after_id"], args["limit"],
        )
        if fmt == "csv":
            return csv_response(db.CSV_COLUMNS, (e.csv_row() for e in rows), "events.csv")
        return json_response({
            "from": iso_utc(args["start"]),
            "to": iso_utc(args["end"]),
            "count": len(rows),
            "events": [e.to_dict() for e in rows],
        })

    r.add_get("/api/v1/events", events)
    return {"/api/v1/events": {"get": _openapi_get()}}


def _openapi_get() -> dict[str, Any]:
    def param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}

    event = {
        "type": "object",
        "required": ["id", "meter", "type", "state", "ts", "evidence"],
        "properties": {
            "id": {"type": "integer", "description": "Event id (also in the MQTT message)"},
            "seq": {"type": "integer", "nullable": True, "description": "Gateway-wide seq it was published with"},
            "meter": {"type": "string"},
            "type": {"type": "string", "enum": list(EVENT_TYPES)},
            "state": {"type": "string", "enum": ["raised", "cleared"]},
            "key": {"type": "string", "description": "Register, phase, or empty: which condition of the meter"},
            "ts": {"type": "string", "format": "date-time"},
            "raised_id": {"type": "integer", "nullable": True,
                          "description": "Cleared events: the id of the event they clear"},
            "message": {"type": "string"},
            "evidence": {"type": "object", "description": "Values, times and thresholds that decided"},
        },
    }
    time_desc = ("ISO-8601; a date alone is local midnight; no offset means the gateway's timezone")
    return {
        "summary": "Review events (register decrease, meter stopped/fast, consumption jump, clock deviation, "
                   "read failure/recovered, phase loss), raised and cleared, with evidence",
        "parameters": [
            param("since", f"Start (inclusive), {time_desc}. Alias 'from'. Default: 30 days before 'until'.",
                  {"type": "string", "format": "date-time"}),
            param("until", f"End (exclusive), {time_desc}. Alias 'to'. Default: now.",
                  {"type": "string", "format": "date-time"}),
            param("meter", "Only this meter (404 if it is not configured)", {"type": "string"}),
            param("type", "Only these event types, comma-separated", {"type": "string"}),
            param("state", "Only raised or only cleared events", {"type": "string", "enum": ["raised", "cleared"]}),
            param("after_id", "Only events with a larger id (incremental polling)",
                  {"type": "integer", "minimum": 0}),
            param("limit", "At most this many events", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}),
            FORMAT,
        ],
        "responses": {
            **json_or_csv(
                {
                    "type": "object",
                    "required": ["from", "to", "count", "events"],
                    "properties": {
                        "from": {"type": "string"},
                        "to": {"type": "string"},
                        "count": {"type": "integer"},
                        "events": {"type": "array", "items": event},
                    },
                },
                "Review events, oldest first",
            ),
            **error_responses(400, 401, 404),
        },
    }


__all__ = ["event_query", "install_event_routes"]
