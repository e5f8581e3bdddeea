"""Billing routes: interval data, settlements with stage consumption, read-completeness KPIs.

Registered by the composition root (:mod:`gateway.runtime`), which passes
:func:`install_billing_routes` to :class:`gateway.api.server.ApiServer`. Each route returns JSON
with exact decimals, or CSV with ``?format=csv``; every bad parameter is a 400 whose body says
what to change; the OpenAPI entries below are what these handlers do (the API tests fuzz them with schemathesis).

* ``GET /api/v1/meters/{id}/intervals?from=&to=&step=15m`` — :mod:`gateway.billing.intervals`
* ``GET /api/v1/meters/{id}/settlements?cycle=YYYY-MM[&table=stages]`` — :mod:`gateway.billing.view`
* ``GET /api/v1/kpi?date=YYYY-MM-DD`` — :mod:`gateway.billing.kpi`
"""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.api.openapi import FORMAT, FROM, METER_ID, TO, error_responses, json_or_csv
from gateway.api.params import BadRequest, output_format, time_range
from gateway.api.server import csv_response, json_response
from gateway.billing import intervals as iv
from gateway.billing import kpi as kpi_mod
from gateway.billing import view
from gateway.billing.cycles import CYCLE_RE, CycleError, cycle_at, parse_label
from gateway.model import iso_utc

if TYPE_CHECKING:
    from gateway.api.server import ApiServer

MIN_YEAR: Final = 1971
MAX_YEAR: Final = 2200
_LO: Final = 31_536_000.0           # 1971-01-01T00:00:00Z
_HI: Final = 7_289_654_400.0        # 2201-01-01T00:00:00Z


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
        # Checked before parse_label, whose own bounds would call 0001-01 "not a month".
        raise BadRequest(f"'cycle' must be a month between {MIN_YEAR}-01 and {MAX_YEAR}-12, "
                         f"such as 2026-11, not {text!r}")
    try:
        year, _ = parse_label(text)
    except CycleError as exc:
        raise BadRequest(f"'cycle' is wrong: {exc}") from None
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise BadRequest(f"'cycle' must be a month between {MIN_YEAR} and {MAX_YEAR}, not {text!r}")
    return text.strip()


def install_billing_routes(server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
    """Add the three billing routes; returns their OpenAPI ``paths``."""
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
        doc = await server.query(view.cycle_view, meter.id, plan, label, tz, now)
        if fmt == "csv":
            if table == "stages":
                return csv_response(view.STAGE_CSV, view.stage_csv_rows(doc), f"{meter.id}-{label}-stages.csv")
            return csv_response(view.SETTLEMENT_CSV, view.settlement_csv_rows(doc),
                                f"{meter.id}-{label}-settlements.csv")
        return json_response(doc)

    async def kpi(request: web.Request) -> web.Response:
        fmt = output_format(request)
        now = gw.clock.time()
        day = parse_day(request.query.get("date"), tz, now)
        doc = await server.query(kpi_mod.kpi_for_day, settings, day, now)
        if fmt == "csv":
            return csv_response(kpi_mod.CSV_COLUMNS, kpi_mod.csv_rows(doc), f"kpi-{day.isoformat()}.csv")
        return json_response(doc)

    r.add_get("/api/v1/meters/{id}/intervals", intervals)
    r.add_get("/api/v1/meters/{id}/settlements", settlements)
    r.add_get("/api/v1/kpi", kpi)
    return billing_paths()


# ---------------------------------------------------------------------------- OpenAPI
_STR: Final = {"type": "string"}
_NSTR: Final = {"type": "string", "nullable": True}
_NUM_OR_NULL: Final = {"type": "number", "nullable": True}
_NUM: Final = {"type": "number"}
_RATIO: Final = {"type": "number", "nullable": True, "minimum": 0, "maximum": 1}
_INT: Final = {"type": "integer"}
_SETTLEMENT_QUALITY: Final = ["meter_frozen", "actual", "late", "estimated", "missing"]


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "required": required if required is not None else list(props), "properties": props}


def _revision_props() -> dict[str, Any]:
    register = _obj({"raw": {"type": "number"}, "value": {"type": "number"}, "unit": _STR,
                     "at": {**_NSTR, "description": "maximum demand: when it occurred (meter local time)"},
                     "quality": {**_NSTR, "description": "only when this register was obtained differently "
                                 "from the settlement (e.g. a live read beside the meter's freeze)"},
                     "read_at": _NSTR}, required=["raw", "value", "unit"])
    return {
        "quality": {"type": "string", "nullable": True, "enum": [*_SETTLEMENT_QUALITY, None]},
        "source": _NSTR,
        "read_at": _NSTR,
        "frozen_at": _NSTR,
        "ct": _NSTR,
        "pt": _NSTR,
        "multiplier": _NUM_OR_NULL,
        "registers": {"type": "object", "additionalProperties": register},
        "reason": _NSTR,
        "revision": {"type": "integer", "nullable": True},
        "estimated_from": {"type": "array", "items": _obj({"seq": _INT, "ts": _STR})},
        "flags": {"type": "array", "items": {"type": "string", "enum": ["clock_unverified"]},
                  "description": "clock_unverified: read while the gateway clock was not synchronized, or with "
                                 "the meter clock beyond the plan's max_meter_offset (the reason says which)"},
        "gateway_clock": {"type": "object", "nullable": True, "description": "the gateway clock's state at the "
                          "read: synchronized (true/false/null = unknown), source (kernel, command, simulated), "
                          "detail, maxerror_s"},
        "meter_clock": {**_NSTR, "description": "the meter's clock read with the settlement (meter local time)"},
        "meter_offset_s": {**_NUM_OR_NULL, "description": "meter clock − gateway clock, seconds"},
        "seq": {"type": "integer", "nullable": True},
        "stored_at": _NSTR,
    }


def billing_paths() -> dict[str, Any]:
    """OpenAPI ``paths`` of the billing routes."""
    interval = _obj({
        "start": _STR, "end": _STR,
        "status": {"type": "string", "enum": ["complete", "missing", "spans_gap"]},
        "span_start": _NSTR,
        "consumption": {"type": "object", "additionalProperties": _NUM_OR_NULL},
        "note": _NSTR,
    })
    stage = _obj({
        "stage": _INT, "start": _STR, "end": _STR,
        "start_quality": {"type": "string", "nullable": True, "enum": [*_SETTLEMENT_QUALITY, None]},
        "end_quality": {"type": "string", "nullable": True, "enum": [*_SETTLEMENT_QUALITY, None]},
        "complete": {"type": "boolean"},
        "consumption": {"type": "object", "additionalProperties": _NUM_OR_NULL},
        "flags": {"type": "array", "items": _STR},
        "codes": {"type": "array", "items": {"type": "string", "enum": ["rollover", "negative", "clock_unverified"]},
                  "description": "machine-readable flags: rollover (counted exactly), negative and "
                                 "clock_unverified (the stage is not complete)"},
    })
    revision = _obj(_revision_props())
    boundary = _obj({
        "boundary_index": _INT,
        "role": {"type": "string", "enum": ["cycle_start", "stage_start", "cycle_end"]},
        "boundary": _STR,
        "status": {"type": "string", "enum": ["stored", "pending", "none"]},
        **_revision_props(),
        "history": {"type": "array", "items": revision},
    })
    counts = {k: _INT for k in kpi_mod.COUNT_KEYS}
    ratios = {k: _RATIO for k in ("read_completeness", "interval_completeness", "settlement_completeness")}
    kpi_meter = _obj({"meter": _STR, "bus": _STR, "customer": _STR, **counts, **ratios})
    kpi_bus = _obj({"bus": _STR, "meters": _INT, **counts, **ratios})
    kpi_gw = _obj({"meters": _INT, **counts, **ratios})
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
                    "meter": _STR, "from": _STR, "to": _STR, "step": _STR, "timezone": _STR,
                    "registers": {"type": "array", "items": _STR},
                    "count": _INT,
                    "counts": _obj({"complete": _INT, "missing": _INT, "spans_gap": _INT}),
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
                    "meter": _STR, "plan": _STR, "cycle": _STR, "timezone": _STR, "start": _STR, "end": _STR,
                    "settlements": {"type": "array", "items": boundary},
                    "ratio_changes": {"type": "array", "items": _obj({
                        "at": _STR, "read_at": _NSTR, "reason": _NSTR,
                        "old": _obj({"ct": _NUM, "pt": _NUM, "multiplier": _NUM}),
                        "new": _obj({"ct": _NUM, "pt": _NUM, "multiplier": _NUM}),
                        "registers": {"type": "object", "additionalProperties": _obj({
                            "raw": {"type": "number"}, "value_old": {"type": "number"},
                            "value_new": {"type": "number"}, "unit": _STR})},
                    }), "description": "Audited CT/PT changes inside the cycle, with the registers read at "
                        "the change; they split the stage consumption."},
                    "stages": {"type": "array", "items": stage},
                    "cycle_total": stage,
                    "reconciliation": _obj({
                        "reconciled": {"type": "boolean"},
                        "cycle_consumption": {"type": "object", "additionalProperties": _NUM_OR_NULL},
                        "stage_sum": {"type": "object", "additionalProperties": _NUM_OR_NULL},
                        "flags": {"type": "array", "items": _STR},
                    }),
                }), "Settlements"),
                **error_responses(400, 401, 404),
            },
        }},
        "/api/v1/kpi": {"get": {
            "summary": "Read completeness per meter, per bus and for the gateway for one local day",
            "description": "read_completeness = slots read good ÷ slots scheduled (so far, for today); "
                           "interval_completeness = complete intervals ÷ intervals; settlement_completeness = "
                           "boundaries with a real settlement ÷ boundaries due (null when none)" + fmt_csv + ".",
            "parameters": [
                FORMAT,
                {"name": "date", "in": "query", "required": False,
                 "description": "YYYY-MM-DD in the gateway's timezone (default: today).",
                 "schema": {"type": "string", "format": "date"}},
            ],
            "responses": {
                **json_or_csv(_obj({
                    "date": _STR, "timezone": _STR,
                    "meters": {"type": "array", "items": kpi_meter},
                    "buses": {"type": "array", "items": kpi_bus},
                    "gateway": kpi_gw,
                }), "KPI"),
                **error_responses(400, 401),
            },
        }},
    }


__all__ = ["billing_paths", "install_billing_routes", "parse_cycle", "parse_day"]
