"""Billing routes: interval data, settlements with stage consumption, read-completeness KPIs.

Registered by the composition root (:mod:`gateway.runtime`), which passes
:func:`billing_routes` (with its settlement-capture component) to
:class:`gateway.api.server.ApiServer`. Each route returns JSON with exact decimals, or CSV with
``?format=csv``; every bad parameter is a 400 whose body says what to change; the OpenAPI
entries below are what these handlers do (the API tests fuzz them with schemathesis).

* ``GET /api/v1/meters/{id}/intervals?from=&to=&step=15m`` — :mod:`gateway.billing.intervals`
* ``GET /api/v1/meters/{id}/settlements?cycle=YYYY-MM[&table=stages]`` — :mod:`gateway.billing.view`
* ``GET /api/v1/kpi?date=YYYY-MM-DD`` — :mod:`gateway.billing.kpi`
* ``POST /api/v1/meters/{id}/manual-readings`` and ``POST /api/v1/settlements/{id}/confirm``
  (operator role, audited) — :mod:`gateway.billing.corrections`
"""

from __future__ import annotations

import json
from datetime import date
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.api.auth import audit_write, caller, requires
from gateway.api.openapi import (
    FORMAT,
    FROM,
    INTEGER,
    METER_ID,
    NULLABLE_NUMBER,
    NULLABLE_STRING,
    NUMBER,
    STRING,
    TO,
    error_responses,
    json_or_csv,
)
from gateway.api.params import BadRequest, output_format, time_range
from gateway.api.server import csv_response, json_response
from gateway.billing import db as billing_db
from gateway.billing import intervals as iv
from gateway.billing import kpi as kpi_mod
from gateway.billing import view
from gateway.billing.capture import BillingCapture
from gateway.billing.corrections import (
    CorrectionError,
    boundary_of,
    check_confirm,
    check_manual,
    confirm_body,
    manual_body,
)
from gateway.billing.cycles import CYCLE_RE, CycleError, cycle_at, parse_label
from gateway.billing.settlement import FLAG_CODES
from gateway.model import iso_utc
from gateway.tokens import Role

if TYPE_CHECKING:
    from gateway.api.server import ApiServer, RouteInstaller

MIN_YEAR: Final = 1971
MAX_YEAR: Final = 2200
_LO: Final = 31_536_000.0           # 1971-01-01T00:00:00Z
_HI: Final = 7_289_654_400.0        # 2201-01-01T00:00:00Z
MAX_SETTLEMENT_ID: Final = 2**62


def _error(exc: CorrectionError) -> web.HTTPException:
    """The HTTP error of a refused correction (its body says what to send instead)."""
    kinds: dict[int, type[web.HTTPException]] = {404: web.HTTPNotFound, 409: web.HTTPConflict}
    return kinds.get(exc.status, web.HTTPBadRequest)(text=json.dumps({"error": str(exc)}),
                                                     content_type="application/json")


async def _json_body(request: web.Request) -> object:
    """The request's JSON document (400 when it is not JSON)."""
    if not request.can_read_body:
        raise BadRequest("send a JSON body (Content-Type: application/json)")
    try:
        return await request.json()
    except ValueError:
        raise BadRequest("the body is not JSON; send a JSON object") from None


def parse_day(text: str | None, tz: str, now: float) -> date:
    """``date`` query parameter (default: today in the gateway's timezone)."""
    if text is None:
        from gateway.slots import local_date

        return local_date(now, tz).date()
    try:
        d = date.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"'date' must be a day written YYYY-MM-DD, such as 2026-11-30, not {text!r}") from None
    if not MIN_YEAR <= d.year <= MAX_YEAR:
        raise BadRequest(f"'date' must be a day between {MIN_YEAR} and {MAX_YEAR}, not {text!r}")
    return d


def parse_cycle(text: str | None, plan: Any, tz: str, now: float) -> str:
    """``cycle`` query parameter (default: the cycle in progress)."""
    if text is None:
        return cycle_at(plan, now, tz).label
    shape = CYCLE_RE.match(text.strip())
    if shape is not None and not MIN_YEAR <= int(shape.group(1)) <= MAX_YEAR:
        # Checked before parse_label, whose own bounds (1900-9998) are wider than the API's.
        raise BadRequest(f"'cycle' must be a month between {MIN_YEAR}-01 and {MAX_YEAR}-12, "
                         f"such as 2026-11, not {text!r}")
    try:
        year, _ = parse_label(text)
    except CycleError as exc:
        raise BadRequest(f"'cycle' is wrong: {exc}") from None
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise BadRequest(f"'cycle' must be a month between {MIN_YEAR} and {MAX_YEAR}, not {text!r}")
    return text.strip()


def billing_routes(capture: BillingCapture | None) -> RouteInstaller:
    """The installer of the billing routes; the write routes store through ``capture`` (None: billing
    is not running, so they answer 404 while the stored settlements can still be read)."""

    def install(server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
        return install_billing_routes(server, r, capture)

    return install


def install_billing_routes(server: ApiServer, r: web.UrlDispatcher,
                           capture: BillingCapture | None = None) -> dict[str, Any]:
    """Add the billing routes (three reads, two operator writes); returns their OpenAPI ``paths``."""
    gw = server.gateway
    settings = gw.settings
    tz = settings.gateway.timezone

    async def intervals(request: web.Request) -> web.Response:
        meter = server.meter_or_404(request.match_info["id"])
        fmt = output_format(request)
        now = gw.clock.time()
        start, end = time_range(request, tz, now + 1)
        if start < _LO or end > _HI:
            raise BadRequest(f"'from' and 'to' must lie between {MIN_YEAR} and {MAX_YEAR}")
        step_text = request.query.get("step", "15m")
        try:
            step = iv.check_step(settings, meter.settings, step_text)
        except iv.StepError as exc:
            raise BadRequest(str(exc)) from None
        regs, items = await server.query(
            iv.intervals_from_db, settings, meter.settings, start, end, step, now)
        if fmt == "csv":
            return csv_response([*iv.CSV_FIXED, *regs], iv.csv_rows(meter.id, regs, items),
                                f"{meter.id}-intervals.csv")
        counts = {s: sum(1 for x in items if x.status == s) for s in ("complete", "missing", "spans_gap")}
        return json_response({
            "meter": meter.id,
            "from": iso_utc(start),
            "to": iso_utc(end),
            "step": step_text,
            "timezone": tz,
            "registers": regs,
            "count": len(items),
            "counts": counts,
            "intervals": [x.doc() for x in items],
        })

    async def settlements(request: web.Request) -> web.Response:
        meter = server.meter_or_404(request.match_info["id"])
        fmt = output_format(request)
        table = request.query.get("table", "settlements")
        if table not in ("settlements", "stages"):
            raise BadRequest(f"'table' must be settlements or stages, not {table!r}")
        now = gw.clock.time()
        plan_name = meter.settings.billing
        plan = settings.billing.get(plan_name) if plan_name else None
        if plan is None:
            raise BadRequest(f"meter {meter.id} is on no billing plan, so it has no settlements; "
                             "set 'billing' on the meter in the configuration")
        label = parse_cycle(request.query.get("cycle"), plan, tz, now)
        doc = await server.query(view.cycle_view, meter.id, plan, label, tz, now, settings)
        if fmt == "csv":
            if table == "stages":
                return csv_response(view.STAGE_CSV, view.stage_csv_rows(doc), f"{meter.id}-{label}-stages.csv")
            return csv_response(view.SETTLEMENT_CSV, view.settlement_csv_rows(doc),
                                f"{meter.id}-{label}-settlements.csv")
        return json_response(doc)

    async def kpi(request: web.Request) -> web.Response:
        fmt = output_format(request)
        now = gw.clock.time()
        if "cycle" in request.query:
            if "date" in request.query:
                raise BadRequest("give either 'date' (a day's KPIs) or 'cycle' (a billing cycle's), not both")
            label = parse_cycle(request.query["cycle"], None, tz, now)
            cdoc = await server.query(kpi_mod.kpi_for_cycle, settings, label, now)
            if fmt == "csv":
                return csv_response(kpi_mod.CYCLE_CSV_COLUMNS, kpi_mod.cycle_csv_rows(cdoc), f"kpi-{label}.csv")
            return json_response(cdoc)
        day = parse_day(request.query.get("date"), tz, now)
        doc = await server.query(kpi_mod.kpi_for_day, settings, day, now)
        if fmt == "csv":
            return csv_response(kpi_mod.CSV_COLUMNS, kpi_mod.csv_rows(doc), f"kpi-{day.isoformat()}.csv")
        return json_response(doc)

    def _capture() -> BillingCapture:
        if capture is None:
            raise _error(CorrectionError(404, "billing is not running on this gateway (no meter is on a billing "
                                              "plan)"))
        return capture

    @requires(Role.OPERATOR)
    async def manual_reading(request: web.Request) -> web.Response:
        meter = server.meter_or_404(request.match_info["id"])
        plan_name = meter.settings.billing
        plan = settings.billing.get(plan_name) if plan_name else None
        if plan is None:
            raise BadRequest(f"meter {meter.id} is on no billing plan, so it has no settlements to fill; "
                             "set 'billing' on the meter in the configuration")
        doc = await _json_body(request)
        now = gw.clock.time()
        cap = _capture()
        try:
            reading = check_manual(doc, plan, tz, now)
        except CorrectionError as exc:
            raise _error(exc) from None
        b = reading.boundary
        who = caller(request).actor
        body = manual_body(meter, plan, reading, who)
        before = await server.query(billing_db.current_at, meter.id, b.ts)
        done = await cap.store_correction(meter, plan, b, "manual", body, None if before is None else before.id)
        if done is None:
            raise _error(CorrectionError(409, "the settlement of this boundary changed while the reading was "
                                              "entered; look at it again and resend"))
        previous, row = done
        after = {"id": row.id, **view.settlement_doc(row)}
        await audit_write(server.auth, request, "reading.manual", f"{meter.id}@{iso_utc(b.ts)}",
                          None if previous is None else {"id": previous.id, **view.settlement_doc(previous)}, after)
        return json_response({"meter": meter.id, "boundary": iso_utc(b.ts), "cycle": b.cycle,
                              "boundary_index": b.index, **after,
                              "supersedes": row.body.get("supersedes")}, status=201)

    @requires(Role.OPERATOR)
    async def confirm(request: web.Request) -> web.Response:
        try:
            sid = int(request.match_info["id"])
        except ValueError:
            raise BadRequest("the settlement id is a number, as GET /api/v1/meters/{id}/settlements shows it "
                             "(field id)") from None
        cap = _capture()
        s = await server.query(billing_db.by_id, sid) if 1 <= sid <= MAX_SETTLEMENT_ID else None
        if s is None or s.meter not in gw.meters or cap.plans.get(s.meter) is None:
            raise _error(CorrectionError(404, f"no settlement with id {sid}; GET /api/v1/meters/{{id}}/settlements "
                                              "lists them with their ids"))
        try:
            reason = check_confirm(await _json_body(request))
        except CorrectionError as exc:
            raise _error(exc) from None
        meter = gw.meters[s.meter]
        plan = cap.plans[s.meter]
        try:
            body = confirm_body(s, caller(request).actor, reason, gw.clock.time())
        except CorrectionError as exc:
            raise _error(exc) from None
        done = await cap.store_correction(meter, plan, boundary_of(s), s.quality, body, s.id)
        if done is None:
            raise _error(CorrectionError(409, f"settlement {sid} was superseded meanwhile; confirm the current one"))
        _, row = done
        after = {"id": row.id, **view.settlement_doc(row)}
        await audit_write(server.auth, request, "settlement.confirm", f"{s.meter}@{iso_utc(s.boundary)}",
                          {"id": s.id, **view.settlement_doc(s)}, after)
        return json_response({"meter": s.meter, "boundary": iso_utc(s.boundary), "cycle": s.cycle,
                              "boundary_index": s.index, **after, "supersedes": row.body.get("supersedes")})

    r.add_get("/api/v1/meters/{id}/intervals", intervals)
    r.add_get("/api/v1/meters/{id}/settlements", settlements)
    r.add_get("/api/v1/kpi", kpi)
    r.add_post("/api/v1/meters/{id}/manual-readings", manual_reading)
    r.add_post("/api/v1/settlements/{id}/confirm", confirm)
    return billing_paths()


# ---------------------------------------------------------------------------- OpenAPI
_RATIO: Final = {"type": "number", "nullable": True, "minimum": 0, "maximum": 1}
_SETTLEMENT_QUALITY: Final = ["meter_frozen", "actual", "manual", "late", "estimated", "missing"]


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": required if required is not None else list(props), "properties": props}


def _revision_props() -> dict[str, Any]:
    register = _obj({"raw": {"type": "number"}, "value": {"type": "number"}, "unit": STRING,
                     "at": {**NULLABLE_STRING, "description": "maximum demand: when it occurred (meter local time)"},
                     "quality": {**NULLABLE_STRING, "description": "only when this register was obtained differently "
                                 "from the settlement (e.g. a live read beside the meter's freeze)"},
                     "read_at": NULLABLE_STRING}, required=["raw", "value", "unit"])
    return {
        "id": {"type": "integer", "nullable": True, "description": "this version's id (POST "
               "/api/v1/settlements/{id}/confirm takes it)"},
        "quality": {"type": "string", "nullable": True, "enum": [*_SETTLEMENT_QUALITY, None]},
        "source": NULLABLE_STRING,
        "entered_by": {**NULLABLE_STRING, "description": "manual: the API token's name that entered the reading"},
        "note": {**NULLABLE_STRING, "description": "manual: the operator's note"},
        "confirmed": {"type": "object", "nullable": True, "description": "an operator's confirmation of a "
                      "clock_unverified or estimated value: by, at, reason"},
        "supersedes": {"type": "object", "nullable": True, "description": "the version this one replaced: "
                       "id, quality, seq, revision"},
        "read_at": NULLABLE_STRING,
        "frozen_at": NULLABLE_STRING,
        "ct": NULLABLE_STRING,
        "pt": NULLABLE_STRING,
        "multiplier": NULLABLE_NUMBER,
        "registers": {"type": "object", "additionalProperties": register},
        "reason": NULLABLE_STRING,
        "revision": {"type": "integer", "nullable": True},
        "estimated_from": {"type": "array", "items": _obj({"seq": INTEGER, "ts": STRING})},
        "flags": {"type": "array", "items": {"type": "string", "enum": ["clock_unverified"]},
                  "description": "clock_unverified: read while the gateway clock was not synchronized, or with "
                                 "the meter clock beyond the plan's max_meter_offset (the reason says which)"},
        "gateway_clock": {"type": "object", "nullable": True, "description": "the gateway clock's state at the "
                          "read: synchronized (true/false/null = unknown), source (kernel, command, simulated), "
                          "detail, maxerror_s"},
        "meter_clock": {**NULLABLE_STRING,
                        "description": "the meter's clock read with the settlement (meter local time)"},
        "meter_offset_s": {**NULLABLE_NUMBER, "description": "meter clock − gateway clock, seconds"},
        "demand_period": {"type": "object", "nullable": True, "description": "the meter's last closed demand "
                          "period read with the settlement (DL/T 645 settlement-day record 0101 0001): raw, "
                          "value (kW after CT×PT), unit, at (when the maximum occurred, meter local), "
                          "period_start, period_end (UTC), record"},
        "seq": {"type": "integer", "nullable": True},
        "stored_at": NULLABLE_STRING,
    }


def _two_part_props() -> dict[str, Any]:
    """Stage / cycle fields of the two-part tariff (gateway.billing.demand.TWO_PART_FIELDS)."""
    quadrants = {q: {**NULLABLE_NUMBER, "description": f"quadrant {q[1]} reactive energy of the period, kvarh "
                     "after CT×PT"} for q in ("q1", "q2", "q3", "q4")}
    return {
        "max_demand_kw": {**NULLABLE_NUMBER, "description": "maximum demand of the period, kW after CT×PT"},
        "max_demand_at": {**NULLABLE_STRING, "description": "when it occurred: the end of its demand window (UTC)"},
        "demand_source": {"type": "string", "nullable": True, "enum": ["meter", "computed", None],
                          "description": "meter: the meter's demand register or settlement-day record; "
                                         "computed: from the gateway's interval readings (plan's demand key)"},
        "demand_detail": {"type": "object", "description": "meter: record (current, settlement_day); computed: "
                          "method, window_minutes, slide_minutes, windows, gaps; note"},
        "reactive_kvarh": _obj(quadrants),
        "power_factor": {**NULLABLE_NUMBER, "description": "cos φ = ΔkWh ÷ √(ΔkWh² + Δkvarh²), 4 decimals"},
        "power_factor_registers": {"type": "array", "items": STRING, "description": "the registers used, active "
                                   "first: energy_import_kwh with energy_q1_kvarh + energy_q4_kvarh, or with "
                                   "energy_import_kvarh when the meter has no quadrant registers"},
        "power_factor_kwh": {**NULLABLE_NUMBER, "description": "ΔkWh used"},
        "power_factor_kvarh": {**NULLABLE_NUMBER, "description": "Δkvarh used (sum of the reactive registers)"},
    }


def billing_paths() -> dict[str, Any]:
    """OpenAPI ``paths`` of the billing routes."""
    interval = _obj({
        "start": STRING, "end": STRING,
        "status": {"type": "string", "enum": ["complete", "missing", "spans_gap"]},
        "span_start": NULLABLE_STRING,
        "consumption": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
        "note": NULLABLE_STRING,
    })
    stage = _obj({
        "stage": INTEGER, "start": STRING, "end": STRING,
        "start_quality": {"type": "string", "nullable": True, "enum": [*_SETTLEMENT_QUALITY, None]},
        "end_quality": {"type": "string", "nullable": True, "enum": [*_SETTLEMENT_QUALITY, None]},
        "complete": {"type": "boolean"},
        "consumption": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
        "flags": {"type": "array", "items": STRING},
        "codes": {"type": "array", "items": {"type": "string", "enum": list(FLAG_CODES)},
                  "description": "machine-readable flags: rollover (counted exactly), negative and "
                                 "clock_unverified (the stage is not complete), exchange and ratio_change (a "
                                 "meter exchange or CT/PT change inside the stage split it, each part priced "
                                 "with its own CT×PT)"},
        **_two_part_props(),
    })
    revision = _obj(_revision_props())
    boundary = _obj({
        "boundary_index": INTEGER,
        "role": {"type": "string", "enum": ["cycle_start", "stage_start", "cycle_end"]},
        "boundary": STRING,
        "status": {"type": "string", "enum": ["stored", "pending", "none"]},
        **_revision_props(),
        "history": {"type": "array", "items": revision},
    })
    counts = {k: INTEGER for k in kpi_mod.COUNT_KEYS}
    ratios = {k: _RATIO for k in ("read_completeness", "interval_completeness", "settlement_completeness",
                                  "on_time_rate")}
    kpi_meter = _obj({"meter": STRING, "bus": STRING, "customer": STRING, **counts, **ratios})
    kpi_bus = _obj({"bus": STRING, "meters": INTEGER, **counts, **ratios})
    kpi_customer = _obj({"customer": STRING, "meters": INTEGER, **counts, **ratios})
    kpi_gw = _obj({"meters": INTEGER, **counts, **ratios})
    s_counts = {k: INTEGER for k in kpi_mod.SETTLEMENT_KEYS}
    s_ratios = {"settlement_completeness": _RATIO, "on_time_rate": _RATIO}
    kpi_cycle = _obj({
        "cycle": STRING, "timezone": STRING,
        "meters": {"type": "array", "items": _obj({"meter": STRING, "bus": STRING, "customer": STRING, "plan": STRING,
                                                   **s_counts, **s_ratios})},
        "customers": {"type": "array", "items": _obj({"customer": STRING, "meters": INTEGER, **s_counts, **s_ratios})},
        "gateway": _obj({"meters": INTEGER, **s_counts, **s_ratios}),
    })
    fmt_csv = "; CSV with ?format=csv"
    return {
        "/api/v1/meters/{id}/intervals": {"get": {
            "summary": "Per-interval consumption from register differences at aligned slots; gaps shown, "
                       "never filled",
            "description": "Each interval is complete (both ends read), missing (its end was not read) or "
                           "spans_gap (its end was read but its start was not: the interval carries the whole "
                           "register difference back to span_start). Values are after CT×PT" + fmt_csv + ".",
            "parameters": [
                METER_ID, FROM, TO, FORMAT,
                {"name": "step", "in": "query", "required": False,
                 "description": "Interval length; must be a multiple of the meter's energy read interval.",
                 "schema": {"type": "string", "enum": list(iv.STEPS), "default": "15m"}},
            ],
            "responses": {
                **json_or_csv(_obj({
                    "meter": STRING, "from": STRING, "to": STRING, "step": STRING, "timezone": STRING,
                    "registers": {"type": "array", "items": STRING},
                    "count": INTEGER,
                    "counts": _obj({"complete": INTEGER, "missing": INTEGER, "spans_gap": INTEGER}),
                    "intervals": {"type": "array", "items": interval},
                }), "Intervals"),
                **error_responses(400, 401, 404),
            },
        }},
        "/api/v1/meters/{id}/settlements": {"get": {
            "summary": "Settlement readings of one billing cycle with quality and history, stage consumption "
                       "and reconciliation",
            "description": "Every boundary of the cycle (start, stage starts, end) with its current settlement "
                           "and the ones it superseded; stage consumption = (end − start) × CT × PT per register "
                           "with both qualities; reconciliation of the stages against the cycle" + fmt_csv
                           + " (table=stages for stage consumption).",
            "parameters": [
                METER_ID, FORMAT,
                {"name": "cycle", "in": "query", "required": False,
                 "description": "YYYY-MM: the cycle that starts on the plan's cycle day of that month "
                                "(default: the cycle in progress).",
                 "schema": {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])$"}},
                {"name": "table", "in": "query", "required": False,
                 "description": "CSV only: settlements (default) or stages.",
                 "schema": {"type": "string", "enum": ["settlements", "stages"], "default": "settlements"}},
            ],
            "responses": {
                **json_or_csv(_obj({
                    "meter": STRING, "plan": STRING, "cycle": STRING, "timezone": STRING, "start": STRING,
                    "end": STRING,
                    "settlements": {"type": "array", "items": boundary},
                    "ratio_changes": {"type": "array", "items": _obj({
                        "at": STRING, "read_at": NULLABLE_STRING, "reason": NULLABLE_STRING,
                        "old": _obj({"ct": NUMBER, "pt": NUMBER, "multiplier": NUMBER}),
                        "new": _obj({"ct": NUMBER, "pt": NUMBER, "multiplier": NUMBER}),
                        "registers": {"type": "object", "additionalProperties": _obj({
                            "raw": {"type": "number"}, "value_old": {"type": "number"},
                            "value_new": {"type": "number"}, "unit": STRING})},
                    }), "description": "Audited CT/PT changes inside the cycle, with the registers read at "
                        "the change; they split the stage consumption."},
                    "exchanges": {"type": "array", "items": _obj({
                        "id": INTEGER, "at": STRING, "old_serial": NULLABLE_STRING, "new_serial": NULLABLE_STRING,
                        "old": _obj({"ct": NUMBER, "pt": NUMBER, "multiplier": NUMBER}),
                        "new": _obj({"ct": NUMBER, "pt": NUMBER, "multiplier": NUMBER}),
                        "registers": {"type": "object", "additionalProperties": _obj({
                            "raw_old": NUMBER, "raw_new": NUMBER, "value_old": NUMBER, "value_new": NUMBER,
                            "unit": STRING})},
                    }, required=["id", "at", "old", "new", "registers"]),
                        "description": "Meter exchanges (换表) inside the cycle: the old meter's final and the new "
                                       "meter's initial registers; they split the stage consumption."},
                    "stages": {"type": "array", "items": stage},
                    "cycle_total": stage,
                    "reconciliation": _obj({
                        "reconciled": {"type": "boolean"},
                        "cycle_consumption": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
                        "stage_sum": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
                        "flags": {"type": "array", "items": STRING},
                    }),
                }), "Settlements"),
                **error_responses(400, 401, 404),
            },
        }},
        "/api/v1/kpi": {"get": {
            "summary": "Read completeness and on-time rate per meter, bus, customer and gateway, for one local day "
                       "or (cycle=) one billing cycle",
            "description": "read_completeness = slots read good ÷ slots scheduled (so far, for today); "
                           "interval_completeness = complete intervals ÷ intervals; settlement_completeness = "
                           "boundaries with a real settlement (meter_frozen, actual, late) ÷ boundaries due (null "
                           "when none); on_time_rate = boundaries meter_frozen or actual (within the tolerance) ÷ "
                           "boundaries due; late, manual, estimated and missing counted apart. With cycle=YYYY-MM: "
                           "the settlement counts of every boundary of that cycle that has come, per meter, "
                           "customer and gateway" + fmt_csv + ".",
            "parameters": [
                FORMAT,
                {"name": "date", "in": "query", "required": False,
                 "description": "YYYY-MM-DD in the gateway's timezone (default: today).",
                 "schema": {"type": "string", "format": "date"}},
                {"name": "cycle", "in": "query", "required": False,
                 "description": "YYYY-MM: settlement KPIs of that billing cycle instead of a day (not with date).",
                 "schema": {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])$"}},
            ],
            "responses": {
                **json_or_csv({"oneOf": [_obj({
                    "date": STRING, "timezone": STRING,
                    "meters": {"type": "array", "items": kpi_meter},
                    "buses": {"type": "array", "items": kpi_bus},
                    "customers": {"type": "array", "items": kpi_customer},
                    "gateway": kpi_gw,
                }), kpi_cycle]}, "KPI"),
                **error_responses(400, 401),
            },
        }},
        **_correction_paths(revision),
    }


def _correction_paths(revision: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI entries of the two operator write routes (manual reading, confirmation)."""
    result = {**revision, "properties": {**revision["properties"], "meter": STRING, "boundary": STRING,
                                         "cycle": STRING, "boundary_index": INTEGER}}
    conflict = {"description": "The settlement needs no confirmation, or changed meanwhile",
                "content": {"application/json": {"schema": {"type": "object",
                                                            "properties": {"error": {"type": "string"}}}}}}
    return {
        "/api/v1/meters/{id}/manual-readings": {"post": {
            "summary": "Enter an on-site reading (补抄) as a settlement of quality manual (operator role, audited)",
            "description": "registers: register → value as the meter shows it (before CT×PT), only the plan's "
                           "registers; read_at: when it was read (ISO-8601, not in the future); note: free text; "
                           "boundary (optional): the plan boundary it settles — without it, the latest boundary "
                           "at or before read_at (+ the plan's tolerance) when read_at is less than a day after "
                           "it. Fills a missing boundary; for a boundary that has a value it is a correction: a "
                           "new version naming the one it supersedes (both stay in the settlements). Who = the "
                           "token's name.",
            "parameters": [METER_ID],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["registers", "read_at"],
                "properties": {
                    "registers": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0}},
                    "read_at": {"type": "string", "format": "date-time"},
                    "note": {"type": "string"},
                    "boundary": {"type": "string", "format": "date-time"},
                }}}}},
            "responses": {
                "201": {"description": "The stored manual settlement",
                        "content": {"application/json": {"schema": result}}},
                "409": conflict,
                **error_responses(400, 401, 403, 404),
            },
        }},
        "/api/v1/settlements/{id}/confirm": {"post": {
            "summary": "Accept a clock_unverified or estimated settlement with a reason (operator role, audited)",
            "description": "Stores a new version of the settlement, the same value with confirmed (by, at, reason), "
                           "naming the one it supersedes; a clock_unverified stage end then counts as complete. "
                           "409 when the settlement needs no confirmation or is not the current version.",
            "parameters": [{"name": "id", "in": "path", "required": True,
                            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_SETTLEMENT_ID}}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object", "required": ["reason"], "properties": {"reason": {"type": "string"}}}}}},
            "responses": {
                "200": {"description": "The confirmed version", "content": {"application/json": {"schema": result}}},
                "409": conflict,
                **error_responses(400, 401, 403, 404),
            },
        }},
    }


__all__ = ["billing_paths", "billing_routes", "install_billing_routes", "parse_cycle", "parse_day"]
