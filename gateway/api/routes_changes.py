"""Meter exchange (换表) and CT/PT change routes: dated records with the registers at the change.

* ``POST /api/v1/meters/{id}/exchanges`` — the old meter's final registers, the new meter's
  initial registers, new serial, new CT/PT (default: unchanged), when, a note;
* ``POST /api/v1/meters/{id}/ratio-changes`` — the new CT and/or PT, when, and the registers
  the meter showed then (required).

Both need the operator role. A request is checked (:mod:`gateway.billing.exchanges`) against
what is recorded — the meter's earlier changes and its stored readings around the change — and
any problem is a 4xx whose body says what to send, with nothing stored. An accepted one is
stored by :meth:`gateway.billing.capture.BillingCapture.store_change` (the record splits the
stages it falls in, and its ``meter_exchange`` / ``ratio_change`` review event is stored and
published on MQTT), appended to the hash-chained audit log (``meter.exchange`` /
``meter.ratio_change``, who = the token), and handed to the review rules
(:func:`gateway.review.rules.note_change`): no ``register_decrease`` or ``meter_fast`` is judged
across it, and such an event already raised for a reading at or after the change is closed with
the record named as the reason. One lock serialises the checks and the write, so two requests
for the same meter cannot both pass the order check.

``amr-gateway meter exchange|ratio-change`` (:mod:`gateway.changescli`) posts to these routes
of the running gateway, so the gateway stays the only writer of its store.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.api.auth import audit_write, caller, requires
from gateway.api.openapi import METER_ID, NULLABLE_STRING, NUMBER, STRING, error_responses
from gateway.api.params import BadRequest
from gateway.api.server import json_response
from gateway.billing import db as billing_db
from gateway.billing.capture import BillingCapture
from gateway.billing.corrections import CorrectionError
from gateway.billing.exchanges import ChangeKind, change_body, check_request, plan_registers
from gateway.model import iso_utc
from gateway.review.engine import ReviewEngine
from gateway.review.rules import note_change
from gateway.tokens import Role

if TYPE_CHECKING:
    from gateway.api.server import ApiServer, RouteInstaller

log = logging.getLogger("amr.api.changes")

#: Stored readings looked at on each side of a change for the bounds check.
LOOKBACK_ROWS: Final = 50
#: Review conditions a recorded change explains.
EXPLAINED: Final = ("register_decrease", "meter_fast")


def _error(exc: CorrectionError) -> web.HTTPException:
    kinds: dict[int, type[web.HTTPException]] = {404: web.HTTPNotFound, 409: web.HTTPConflict}
    return kinds.get(exc.status, web.HTTPBadRequest)(text=json.dumps({"error": str(exc)}),
                                                     content_type="application/json")


def change_routes(capture: BillingCapture | None, engine: ReviewEngine | None) -> RouteInstaller:
    """The installer of the two change routes (``capture`` None: billing is not running, 404)."""

    def install(server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
        return install_change_routes(server, r, capture, engine)

    return install


def install_change_routes(server: ApiServer, r: web.UrlDispatcher, capture: BillingCapture | None,
                          engine: ReviewEngine | None) -> dict[str, Any]:
    """Add ``POST .../exchanges`` and ``POST .../ratio-changes``; returns their OpenAPI ``paths``."""
    gw = server.gateway
    tz = gw.settings.gateway.timezone
    lock = asyncio.Lock()

    async def record(request: web.Request, kind: ChangeKind) -> web.Response:
        meter = server.meter_or_404(request.match_info["id"])
        plan_name = meter.settings.billing
        plan = gw.settings.billing.get(plan_name) if plan_name else None
        if plan is None:
            raise BadRequest(f"meter {meter.id} is on no billing plan; set 'billing' on the meter in the "
                             "configuration, so its registers are known")
        if capture is None:
            raise _error(CorrectionError(404, "billing is not running on this gateway (no meter is on a billing "
                                              "plan)"))
        if not request.can_read_body:
            raise BadRequest("send a JSON body (Content-Type: application/json)")
        try:
            doc = await request.json()
        except ValueError:
            raise BadRequest("the body is not JSON; send a JSON object") from None
        who = caller(request).actor
        async with lock:
            try:
                req = check_request(kind, doc, plan, tz, gw.clock.time(), meter.profile.points)
                changes = await server.query(billing_db.all_changes, meter.id)
                near = await server.query(billing_db.readings_around, meter.id, req.at, plan_registers(plan),
                                          LOOKBACK_ROWS, True)
                body = change_body(req, meter, changes, near, who)
            except CorrectionError as exc:
                raise _error(exc) from None
            rid = await capture.store_change(meter.id, req.at, body)
        action = "meter.exchange" if kind == "exchange" else "meter.ratio_change"
        superseded = next((c for c in changes if c.get("id") == body.get("supersedes")), None)
        await audit_write(server.auth, request, action, meter.id, superseded, {"id": rid, **body})
        closed = await _tell_review(meter.id, req.at, rid, kind, who)
        log.info("meter %s: %s recorded at %s by %s (record %d)", meter.id, kind, iso_utc(req.at), who, rid)
        return json_response({"id": rid, **body, "closed_events": closed}, status=201)

    async def _tell_review(meter: str, at: float, rid: int, kind: ChangeKind, who: str) -> list[int]:
        """Make the rules not judge across the change; close what they raised across it already."""
        if engine is None:
            return []
        state = engine.state(meter)
        note_change(state, at)
        what = "meter exchange" if kind == "exchange" else "CT/PT change"
        closed: list[int] = []
        for (etype, key), cond in list(state.active.items()):
            if etype not in EXPLAINED or cond.raised_ts < at or cond.event_id is None:
                continue
            del state.active[(etype, key)]
            try:
                await engine.close(cond.event_id, who, f"explained by the {what} recorded at {iso_utc(at)} "
                                                       f"(record {rid})")
                closed.append(cond.event_id)
            except Exception:
                log.exception("meter %s: review event %s could not be closed", meter, cond.event_id)
        return closed

    @requires(Role.OPERATOR)
    async def exchanges(request: web.Request) -> web.Response:
        return await record(request, "exchange")

    @requires(Role.OPERATOR)
    async def ratio_changes(request: web.Request) -> web.Response:
        return await record(request, "ratio_change")

    r.add_post("/api/v1/meters/{id}/exchanges", exchanges)
    r.add_post("/api/v1/meters/{id}/ratio-changes", ratio_changes)
    return change_paths()


# ---------------------------------------------------------------------------- OpenAPI
_REGS: Final = {"type": "object", "additionalProperties": {"type": "number", "minimum": 0},
                "description": "register → value as the meter shows it (before CT×PT); every cumulative register "
                               "of the meter's billing plan"}
_RATIO: Final = {"oneOf": [{"type": "string", "pattern": r"^\s*[0-9.]+\s*(/\s*[0-9.]+\s*)?$"},
                           {"type": "number", "minimum": 1}],
                 "description": 'a ratio such as "400/5" (primary/secondary) or a factor such as 80'}


def change_paths() -> dict[str, Any]:
    """OpenAPI ``paths`` of the change routes."""
    side = {"type": "object", "required": ["ct", "pt", "multiplier"],
            "properties": {"ct": NUMBER, "pt": NUMBER, "multiplier": NUMBER, "ct_ratio": NULLABLE_STRING,
                           "pt_ratio": NULLABLE_STRING}}
    record = {"type": "object", "required": ["id", "kind", "meter", "at", "old", "new", "registers"], "properties": {
        "id": {"type": "integer"},
        "kind": {"type": "string", "enum": ["exchange", "ratio_change"]},
        "meter": STRING, "at": STRING, "at_epoch": NUMBER, "read_at": NULLABLE_STRING, "reason": NULLABLE_STRING,
        "old": side, "new": side,
        "registers": {"type": "object", "additionalProperties": {"type": "object", "properties": {
            "raw": NUMBER, "raw_old": NUMBER, "raw_new": NUMBER, "value_old": NUMBER, "value_new": NUMBER,
            "unit": STRING}},
            "description": "per register: value_old (under the old ratio: at the change, or the old meter's "
                           "final) and value_new (under the new one: at the change, or the new meter's initial)"},
        "entered_by": STRING, "note": NULLABLE_STRING,
        "old_serial": NULLABLE_STRING, "new_serial": NULLABLE_STRING,
        "supersedes": {"type": "integer", "nullable": True,
                       "description": "the automatic record of the same CT/PT change (taken at a restart) this "
                                      "one replaces"},
        "closed_events": {"type": "array", "items": {"type": "integer"},
                          "description": "register_decrease / meter_fast events raised across the change, closed"},
    }}
    conflict = {"description": "The change conflicts with what is recorded: dated at or before the meter's previous "
                               "change, or registers that contradict its stored readings",
                "content": {"application/json": {"schema": {"type": "object",
                                                            "properties": {"error": {"type": "string"}}}}}}
    created = {"description": "The stored record", "content": {"application/json": {"schema": record}}}
    common = "Operator role, audited (meter.exchange / meter.ratio_change) and raised as a review event. "
    return {
        "/api/v1/meters/{id}/exchanges": {"post": {
            "summary": "Record a meter exchange (换表) with the old meter's final and the new meter's initial "
                       "registers",
            "description": common + "A stage spanning it is (old final − start) × old CT×PT + (end − new initial) "
                           "× new CT×PT per register (stage code exchange). at: when (ISO-8601, not in the future, "
                           "after the meter's previous change); ct/pt: the new meter's ratios (default: unchanged).",
            "parameters": [METER_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["at", "old_final", "new_initial", "new_serial"],
                "properties": {"at": {"type": "string", "format": "date-time"}, "old_final": _REGS,
                               "new_initial": _REGS, "new_serial": {"type": "string", "maxLength": 64},
                               "ct": _RATIO, "pt": _RATIO, "note": STRING}}}}},
            "responses": {"201": created, "409": conflict, **error_responses(400, 401, 403, 404)},
        }},
        "/api/v1/meters/{id}/ratio-changes": {"post": {
            "summary": "Record a CT/PT change with its time and the registers at that time",
            "description": common + "Splits the stage it falls in: (at change − start) × old + (end − at change) × "
                           "new (stage code ratio_change). Registers are required. Reload the configuration with "
                           "the new ct_ratio/pt_ratio too: the record the gateway then takes by itself names this "
                           "one, and one entered after that restart replaces it (supersedes).",
            "parameters": [METER_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["at", "registers"],
                "properties": {"at": {"type": "string", "format": "date-time"}, "ct": _RATIO, "pt": _RATIO,
                               "registers": _REGS, "note": STRING}}}}},
            "responses": {"201": created, "409": conflict, **error_responses(400, 401, 403, 404)},
        }},
    }


__all__ = ["change_paths", "change_routes", "install_change_routes"]
