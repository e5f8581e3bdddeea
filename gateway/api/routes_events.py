"""``GET /api/v1/events``: review events (raised and cleared) with their evidence, JSON or CSV,
and the worklist: ``POST /api/v1/events/{id}/ack`` and ``/close`` (operator role).

Filters: time (``since``/``until``), ``meter``, ``customer``, ``type`` (alias ``rule``),
``severity``, ``state`` — ``raised``/``cleared`` for the events themselves, or worklist
states ``open``/``acknowledged``/``closed`` (comma-separated) for raised events — and pages
with ``after_id`` + ``limit`` (``next_after_id`` in the answer when there may be more).

Events come from the review engine's own table (``review_event``, see
:mod:`gateway.review.db`), which holds exactly what was published on MQTT. Registered by the
composition root (:mod:`gateway.runtime`), which passes :func:`install_event_routes` to
:class:`gateway.api.server.ApiServer`.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.api.auth import caller, requires
from gateway.api.openapi import FORMAT, error_responses, json_or_csv
from gateway.api.params import MAX_RANGE_DAYS, BadRequest, int_param, output_format, parse_time
from gateway.api.server import RouteInstaller, csv_response, json_response
from gateway.model import iso_utc
from gateway.review import db
from gateway.review.engine import ReviewEngine
from gateway.review.rules import EVENT_TYPES
from gateway.review.worklist import SEVERITIES, WORK_STATES, WorklistError, severity
from gateway.tokens import Role

if TYPE_CHECKING:
    from gateway.api.server import ApiServer

DEFAULT_SPAN_S: Final = 30 * 86400.0
MAX_LIMIT: Final = 100_000
MAX_EVENT_ID: Final = 2**62


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
    if "type" in q and "rule" in q:
        raise BadRequest("give 'type' or 'rule', not both")
    type_text = q.get("type") or q.get("rule")
    if type_text:
        types = [t.strip() for t in type_text.split(",") if t.strip()]
        unknown = [t for t in types if t not in EVENT_TYPES]
        if unknown:
            raise BadRequest(f"'type' must be one or more (comma-separated) of {', '.join(EVENT_TYPES)}; "
                             f"{', '.join(repr(t) for t in unknown)} is not one")
    if q.get("severity"):
        wanted = [v.strip() for v in q["severity"].split(",") if v.strip()]
        bad = [v for v in wanted if v not in SEVERITIES]
        if bad:
            raise BadRequest(f"'severity' must be one or more of {', '.join(SEVERITIES)}, not {', '.join(bad)}")
        types = [t for t in (types if types is not None else EVENT_TYPES) if severity(t) in wanted]
    state = q.get("state")
    work_states: list[str] | None = None
    if state is not None and state not in ("raised", "cleared"):
        work_states = [v.strip() for v in state.split(",") if v.strip()]
        if not work_states or any(v not in WORK_STATES for v in work_states):
            raise BadRequest(f"'state' must be raised or cleared, or worklist states ({', '.join(WORK_STATES)}, "
                             f"comma-separated), not {state!r}")
        state = None
    after_id = int_param(request, "after_id", -1, 0, 2**62)
    return {
        "start": start,
        "end": end,
        "types": types,
        "state": state,
        "work_states": work_states,
        "after_id": None if after_id < 0 else after_id,
        "limit": int_param(request, "limit", 10_000, 1, MAX_LIMIT),
    }


def event_routes(engine: ReviewEngine | None) -> RouteInstaller:
    """The installer of the events routes, acting on ``engine`` (None: review is disabled, so
    the worklist actions answer 404 while the stored events can still be listed)."""

    def install(server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
        return install_event_routes(server, r, engine)

    return install


def install_event_routes(server: ApiServer, r: web.UrlDispatcher, engine: ReviewEngine | None) -> dict[str, Any]:
    """Add ``GET /api/v1/events`` and the worklist actions; return their OpenAPI ``paths`` entries."""
    gw = server.gateway

    async def events(request: web.Request) -> web.Response:
        fmt = output_format(request)
        meter: str | None = request.query.get("meter")
        customer: str | None = request.query.get("customer")
        args = event_query(request, gw.settings.gateway.timezone, gw.clock.time())
        if meter is not None:
            server.meter_or_404(meter)
        meters: list[str] | None = None if meter is None else [meter]
        if customer is not None:
            mine = [m.id for m in gw.settings.meters.values() if m.customer == customer]
            if not mine:
                raise _not_found(f"no configured meter belongs to customer {customer!r}; GET /api/v1/customers "
                                 "lists them")
            meters = [m for m in mine if meters is None or m in meters]
            buses = {gw.settings.meters[m].bus for m in mine}
            meters += [f"bus:{b}" for b in sorted(buses)]     # the bus events of its meters' buses
        if args["work_states"] is not None or (meters is not None and len(meters) > 1):
            states = args["work_states"] if args["work_states"] is not None else None
            if states is None:
                rows = await server.query(_events_of, args, meters)
            else:
                rows = await server.query(db.select_worklist, args["start"], args["end"], meters, args["types"],
                                        states, args["after_id"], args["limit"])
        else:
            rows = await server.query(db.select_events, args["start"], args["end"], meter, args["types"],
                                    args["state"], args["after_id"], args["limit"])
        if fmt == "csv":
            return csv_response(db.CSV_COLUMNS, (e.csv_row() for e in rows), "events.csv")
        items = await server.query(db.work_items, [e.id for e in rows if e.state == "raised"])
        docs = []
        for e in rows:
            doc = {**e.to_dict(), "severity": severity(e.type)}
            if e.id in items:
                doc["worklist"] = items[e.id].doc()
            docs.append(doc)
        return json_response({
            "from": iso_utc(args["start"]),
            "to": iso_utc(args["end"]),
            "count": len(rows),
            "next_after_id": max(e.id for e in rows) if len(rows) == args["limit"] else None,
            "events": docs,
        })

    async def _body(request: web.Request, key: str, required: bool) -> str | None:
        if not request.can_read_body:
            text = None
        else:
            try:
                doc = await request.json()
            except ValueError:
                raise BadRequest(f'send JSON such as {{"{key}": "..."}}') from None
            if not isinstance(doc, dict) or not isinstance(doc.get(key, ""), str):
                raise BadRequest(f'send JSON with "{key}" as text')
            text = doc.get(key)
        if required and not (text or "").strip():
            raise BadRequest(f'"{key}" is required: say why the event is closed (what was found, what was done)')
        return text

    def _engine_id(request: web.Request) -> tuple[ReviewEngine, int]:
        """The review engine and the event id a worklist action names (404 when either is missing)."""
        if engine is None:
            raise _not_found("review is not enabled on this gateway (review: enabled: false)")
        try:
            event_id = int(request.match_info["id"])
        except ValueError:
            raise BadRequest("the event id is a number, as GET /api/v1/events shows it") from None
        if not 1 <= event_id <= MAX_EVENT_ID:
            raise _not_found(f"no event with id {event_id}; GET /api/v1/events lists them")
        return engine, event_id

    async def _answer(change: Any) -> web.Response:
        try:
            ev, item = await change
        except KeyError as exc:
            raise _not_found(f"no raised event with id {exc.args[0]}; GET /api/v1/events?state=open lists "
                             "the open ones") from None
        except WorklistError as exc:
            raise web.HTTPConflict(text=json.dumps({"error": str(exc)}), content_type="application/json") from None
        return json_response({**ev.to_dict(), "severity": severity(ev.type), "worklist": item.doc()})

    @requires(Role.OPERATOR)
    async def ack(request: web.Request) -> web.Response:
        engine, event_id = _engine_id(request)
        note = await _body(request, "note", required=False)
        return await _answer(engine.acknowledge(event_id, caller(request).actor, note))

    @requires(Role.OPERATOR)
    async def close(request: web.Request) -> web.Response:
        engine, event_id = _engine_id(request)
        reason = await _body(request, "reason", required=True)
        return await _answer(engine.close(event_id, caller(request).actor, str(reason)))

    r.add_get("/api/v1/events", events)
    r.add_post("/api/v1/events/{id}/ack", ack)
    r.add_post("/api/v1/events/{id}/close", close)
    return {"/api/v1/events": {"get": _openapi_get()},
            "/api/v1/events/{id}/ack": {"post": _openapi_post("ack", "note", False)},
            "/api/v1/events/{id}/close": {"post": _openapi_post("close", "reason", True)}}


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def _events_of(conn: Any, args: dict[str, Any], meters: list[str]) -> list[db.StoredEvent]:
    """Events of several meters (a customer's): one query per meter, merged by (ts, id)."""
    rows: list[db.StoredEvent] = []
    for m in meters:
        rows += db.select_events(conn, args["start"], args["end"], m, args["types"], args["state"],
                                 args["after_id"], args["limit"])
    rows.sort(key=lambda e: (e.ts, e.id))
    return rows[: args["limit"]]


def _openapi_post(action: str, key: str, required: bool) -> dict[str, Any]:
    what = "Acknowledge an open event (who and when are recorded; an optional note)" if action == "ack" else \
        "Close an open or acknowledged event, with the reason"
    return {
        "summary": f"{what}. Needs the operator role; published on MQTT (amr.event_state.v1) and audited.",
        "parameters": [{"name": "id", "in": "path", "required": True,
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_EVENT_ID}}],
        "requestBody": {"required": required, "content": {"application/json": {"schema": {
            "type": "object", "required": [key] if required else [],
            "properties": {key: {"type": "string"}}}}}},
        "responses": {
            "200": {"description": "The event with its worklist state", "content": {"application/json": {
                "schema": {"type": "object", "required": ["id", "worklist"],
                           "properties": {"id": {"type": "integer"}, "worklist": {"type": "object"}}}}}},
            "409": {"description": "The event's state does not allow it (already closed, already acknowledged)",
                    "content": {"application/json": {"schema": {"type": "object",
                                                                "properties": {"error": {"type": "string"}}}}}},
            **error_responses(400, 401, 403, 404),
        },
    }


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
            "severity": {"type": "string", "enum": list(SEVERITIES)},
            "worklist": {"type": "object", "description": "Raised events: open, acknowledged (who, when, "
                                                          "note) or closed (who, when, reason)"},
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
            param("state", "raised or cleared; or worklist states open, acknowledged, closed (comma-separated)",
                  {"type": "string"}),
            param("rule", "Alias of 'type'", {"type": "string"}),
            param("severity", "Only these severities (high, medium, low), comma-separated", {"type": "string"}),
            param("customer", "Only this customer's meters and their buses (404 if none)", {"type": "string"}),
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
                        "next_after_id": {"type": "integer", "nullable": True,
                                          "description": "Pass as after_id for the next page (null: last page)"},
                        "events": {"type": "array", "items": event},
                    },
                },
                "Review events, oldest first",
            ),
            **error_responses(400, 401, 404),
        },
    }


__all__ = ["event_query", "install_event_routes"]
