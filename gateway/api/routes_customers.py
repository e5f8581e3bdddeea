"""Customer routes: customers (户号), their settlements, and every customer's settlement for billing import.

* ``GET /api/v1/customers`` — the configured customers with their meters, roles and signs
  (JSON, or CSV with ``?format=csv``: one row per customer meter);
* ``GET /api/v1/customers/{id}/settlements?cycle=YYYY-MM`` — one customer's cycle: per stage
  and for the cycle the signed sum per tariff, worst quality, flags, demand and power factor,
  and each meter's own cycle (JSON; ``?format=csv`` gives the customer CSV);
* ``GET /api/v1/settlements?cycle=YYYY-MM`` — every customer's settlement in one CSV (default
  here, for billing import; ``?format=json`` gives the customer documents).

CSV columns: :mod:`gateway.billing.csvcolumns` (``csv_version`` 2, also sent as the
``X-AMR-CSV-Version`` header). Reads go through the API's read pool (``server.query``); the
customers are read from the running settings at each request, so a reload shows at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from gateway.api.openapi import FORMAT, NULLABLE_NUMBER, NULLABLE_STRING, STRING, error_responses, json_or_csv
from gateway.api.params import BadRequest, output_format
from gateway.api.routes_billing import parse_cycle
from gateway.api.server import csv_response, json_response
from gateway.billing import csvcolumns
from gateway.billing.customers import customer_csv_rows, customer_doc, customer_plan, customer_view, customers_of
from gateway.settings import CustomerSettings

if TYPE_CHECKING:
    from gateway.api.server import ApiServer

CUSTOMER_LIST_CSV: Final = ("csv_version", "customer", "name", "tariff", "contract_capacity_kva", "plan", "derived",
                            "meter", "role", "sign", "billing")


def _versioned(resp: web.Response) -> web.Response:
    resp.headers[csvcolumns.CSV_VERSION_HEADER] = str(csvcolumns.CSV_VERSION)
    return resp


def install_customer_routes(server: ApiServer, r: web.UrlDispatcher) -> dict[str, Any]:
    """Add the three customer read routes; returns their OpenAPI ``paths``."""
    gw = server.gateway

    def customer_or_404(cid: str) -> CustomerSettings:
        known = customers_of(gw.settings)
        c = known.get(cid)
        if c is None:
            raise web.HTTPNotFound(text=json_response({"error": f"no customer {cid!r}; GET /api/v1/customers lists "
                                                                "the configured ones"}).text,
                                   content_type="application/json")
        return c

    async def customers(request: web.Request) -> web.Response:
        fmt = output_format(request)
        settings = gw.settings
        docs = [customer_doc(settings, c) for c in customers_of(settings).values()]
        if fmt == "csv":
            rows = [[csvcolumns.CSV_VERSION, d["id"], d["name"], d["tariff"], d["contract_capacity_kva"], d["plan"],
                     d["derived"], m["meter"], m["role"], m["sign"], m["billing"]] for d in docs for m in d["meters"]]
            return _versioned(csv_response(CUSTOMER_LIST_CSV, rows, "customers.csv"))
        return json_response({"count": len(docs), "customers": docs})

    async def settlements(request: web.Request) -> web.Response:
        c = customer_or_404(request.match_info["id"])
        fmt = output_format(request)
        settings = gw.settings
        plan = customer_plan(settings, c)
        if plan is None:
            raise BadRequest(f"customer {c.id} has no meter on a billing plan, so it has no settlements; set "
                             "'billing' on its meters in the configuration")
        now = gw.clock.time()
        label = parse_cycle(request.query.get("cycle"), plan, settings.gateway.timezone, now)
        doc = await server.query(customer_view, settings, c, label, now)
        if fmt == "csv":
            return _versioned(csv_response(csvcolumns.STAGE_COLUMNS, customer_csv_rows(doc),
                                           f"customer-{c.id}-{label}.csv"))
        return json_response(doc)

    async def all_settlements(request: web.Request) -> web.Response:
        fmt = request.query.get("format", "csv").lower()
        if fmt not in ("json", "csv"):
            raise BadRequest(f"'format' must be csv or json, not {fmt!r}")
        settings = gw.settings
        now = gw.clock.time()
        chosen = [c for c in customers_of(settings).values() if customer_plan(settings, c) is not None]
        first = customer_plan(settings, chosen[0]) if chosen else None
        text = request.query.get("cycle")
        if text is None and first is None:
            raise BadRequest("no customer is on a billing plan; give 'cycle' (YYYY-MM) or set 'billing' on the meters")
        label = parse_cycle(text, first, settings.gateway.timezone, now)

        def build(conn: Any) -> list[dict[str, Any]]:
            return [customer_view(conn, settings, c, label, now) for c in chosen]

        docs = await server.query(build)
        if fmt == "json":
            return json_response({"cycle": label, "count": len(docs), "customers": docs})
        rows = [row for d in docs for row in customer_csv_rows(d)]
        return _versioned(csv_response(csvcolumns.STAGE_COLUMNS, rows, f"settlements-{label}.csv"))

    r.add_get("/api/v1/customers", customers)
    r.add_get("/api/v1/customers/{id}/settlements", settlements)
    r.add_get("/api/v1/settlements", all_settlements)
    return customer_paths()


# ---------------------------------------------------------------------------- OpenAPI
_CYCLE: Final = {"type": "string", "pattern": r"^\d{4}-(0[1-9]|1[0-2])$"}


def _obj(props: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": list(props), "properties": props}


def customer_paths() -> dict[str, Any]:
    """OpenAPI ``paths`` of the customer routes."""
    member = _obj({"meter": STRING, "role": {"type": "string", "enum": ["main", "sub", "deduct"]},
                   "sign": {"type": "integer", "enum": [1, -1]}, "billing": NULLABLE_STRING})
    customer = _obj({"id": STRING, "name": NULLABLE_STRING, "contract_capacity_kva": NULLABLE_NUMBER,
                     "tariff": {"type": "string", "enum": ["single", "two_part"]},
                     "power_factor_class": {**NULLABLE_STRING, "description": "力调 class: industrial_160kva (0.90), "
                                            "general_100kva (0.85) or agricultural (0.80)"},
                     "plan": NULLABLE_STRING,
                     "derived": {"type": "boolean", "description": "made from the meters' customer field (no "
                                 "customers section entry)"},
                     "meters": {"type": "array", "items": member}})
    demand = {"max_demand_kw": NULLABLE_NUMBER, "max_demand_at": NULLABLE_STRING, "demand_source": NULLABLE_STRING,
              "demand_detail": {"type": "object", "nullable": True},
              "reactive_kvarh": {"type": "object", "nullable": True, "additionalProperties": NULLABLE_NUMBER,
                                 "description": "Δ reactive energy per quadrant q1..q4, kvarh after CT×PT"},
              "power_factor": NULLABLE_NUMBER, "power_factor_registers": {"type": "array", "items": STRING},
              "power_factor_kwh": NULLABLE_NUMBER, "power_factor_kvarh": NULLABLE_NUMBER}
    stage = {"type": "object", "required": ["stage", "quality", "complete", "consumption", "codes", "flags", "parts"],
             "properties": {
                 "stage": {"oneOf": [{"type": "integer"}, {"type": "string", "enum": ["total"]}]},
                 "start": NULLABLE_STRING, "end": NULLABLE_STRING,
                 "quality": {"type": "string", "description": "the worst quality of every part's start and end"},
                 "complete": {"type": "boolean"},
                 "consumption": {"type": "object", "additionalProperties": NULLABLE_NUMBER,
                                 "description": "register → Σ sign × the meters' stage consumption (after CT×PT); "
                                                "null when a part's value is withheld"},
                 "codes": {"type": "array", "items": STRING},
                 "flags": {"type": "array", "items": STRING},
                 "parts": {"type": "array", "items": {"type": "object", "properties": {
                     "meter": STRING, "role": STRING, "sign": {"type": "integer"}, "start_quality": NULLABLE_STRING,
                     "end_quality": NULLABLE_STRING, "complete": {"type": "boolean", "nullable": True},
                     "codes": {"type": "array", "items": STRING},
                     "consumption": {"type": "object", "additionalProperties": NULLABLE_NUMBER},
                     **{k: {} for k in demand}}}},
                 **demand,
             }}
    settlement = {"type": "object", "required": ["id", "customer", "cycle", "stages", "meter_cycles"],
                  "properties": {**customer["properties"], "customer": STRING, "cycle": STRING, "timezone": STRING,
                                 "start": NULLABLE_STRING, "end": NULLABLE_STRING,
                                 "stages": {"type": "array", "items": stage},
                                 "cycle_total": {**stage, "nullable": True},
                                 "reconciled": {"type": "boolean"},
                                 "flags": {"type": "array", "items": STRING},
                                 "meter_cycles": {"type": "array", "items": {"type": "object"},
                                                  "description": "each meter's cycle, as GET "
                                                                 "/api/v1/meters/{id}/settlements gives it"}}}
    csv_note = (" CSV columns: csv_version 2 (docs/billing.md, 'Customers, KPIs and CSV columns'); the version is "
                "also the X-AMR-CSV-Version header.")
    cycle_param = {"name": "cycle", "in": "query", "required": False,
                   "description": "YYYY-MM: the cycle that starts on the plan's cycle day of that month (default: "
                                  "the cycle in progress).", "schema": _CYCLE}
    return {
        "/api/v1/customers": {"get": {
            "summary": "Configured customers (户号) with their meters, roles and signs",
            "description": "JSON, or CSV with ?format=csv (one row per customer meter).",
            "parameters": [FORMAT],
            "responses": {**json_or_csv(_obj({"count": {"type": "integer"},
                                              "customers": {"type": "array", "items": customer}}), "Customers"),
                          **error_responses(400, 401)},
        }},
        "/api/v1/customers/{id}/settlements": {"get": {
            "summary": "One customer's settlement for a cycle: signed sum of its meters per tariff, per stage",
            "description": "Per stage and for the cycle: Σ sign × stage consumption per register (main + sub − "
                           "deduct), the worst quality of its parts, flags, maximum demand and power factor, and each "
                           "meter's own cycle. ?format=csv gives the customer CSV." + csv_note,
            "parameters": [{"name": "id", "in": "path", "required": True, "schema": STRING}, FORMAT, cycle_param],
            "responses": {**json_or_csv(settlement, "Customer settlement"), **error_responses(400, 401, 404)},
        }},
        "/api/v1/settlements": {"get": {
            "summary": "Every customer's settlement for one cycle in one CSV (billing import)",
            "description": "CSV by default (?format=json for the customer documents): each customer's meter stage "
                           "rows and its signed-sum rows, customers one after another." + csv_note,
            "parameters": [
                {**cycle_param, "description": "YYYY-MM (default: the cycle in progress of the first customer's "
                                               "plan)"},
                {"name": "format", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["csv", "json"], "default": "csv"}},
            ],
            "responses": {
                "200": {"description": "Settlements of every customer",
                        "content": {"text/csv": {"schema": {"type": "string"}},
                                    "application/json": {"schema": _obj({
                                        "cycle": STRING, "count": {"type": "integer"},
                                        "customers": {"type": "array", "items": settlement}})}}},
                **error_responses(400, 401),
            },
        }},
    }


__all__ = ["CUSTOMER_LIST_CSV", "customer_paths", "install_customer_routes"]
