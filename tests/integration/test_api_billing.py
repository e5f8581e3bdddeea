"""The HTTP API as billing and engineers use it: auth, 400s, CSV, and the OpenAPI document.

A real gateway on loopback (two Modbus TCP and two DL/T 645 TCP simulated meters, SQLite on
disk) runs across the 2026-12 cycle start on an accelerated clock, so settlements,
interval data and KPIs exist. Then:

* every route but ``/api/v1/health`` answers 401 without a token and with a wrong one;
* bad parameters answer 400 with ``{"error": <a sentence>}``; an unknown meter 404;
* ``?format=csv`` gives ``text/csv`` with a header row on every list route;
* every route in ``/openapi.json`` exists, and schemathesis fuzzes every operation of the
  document (core routes included) against the running server — valid and invalid
  parameters, real and unknown meter ids — with no server error and every response
  conforming to the document (status code, content type, body schema).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from gateway.billing.rehearsal import HoldingClock, rehearsal_config_text
from gateway.config import load_settings_from_text
from gateway.ports import free_port
from gateway.runtime import Gateway
from gateway.simulator.fleet import SimulatedFleet
from tests.billingkit import capture_of
from tests.servicefixtures import await_until

TOKEN = "api-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = 1_796_054_400.0 - 5 * 60        # 2026-11-30 23:55 +08:00: the 2026-12 cycle starts 5 min later
BOUNDARY = 1_796_054_400.0


@dataclass
class Running:
    gw: Gateway
    clock: HoldingClock

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.gw.api.port}"


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    text = rehearsal_config_text(tmp_path, api_port=free_port(), every="15m")
    settings = load_settings_from_text(text, "<api-test>", tmp_path, {"AMR_API_TOKEN": TOKEN})
    clock = HoldingClock(START, 600.0)
    fleet = SimulatedFleet(settings, clock, seed=21)
    await fleet.start()
    gw = Gateway(settings, clock, enable_sinks=False)
    try:
        await gw.start()
        cap = capture_of(gw)

        def settled() -> int:
            return sum(1 for (_, b), k in cap.current.items() if b == BOUNDARY and k.quality != "missing")

        await await_until(lambda: clock.time() > BOUNDARY + 35 * 60 and settled() == 4, 40,
                          "four meters settled at the boundary, 35 simulated minutes on",
                          detail=lambda: f"{settled()} settled, clock {clock.time() - BOUNDARY:.0f} s past it")
        yield Running(gw, clock)
    finally:
        await gw.stop()
        await fleet.stop()


async def get(r: Running, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as http, http.get(r.base + path, headers=headers) as resp:
        return resp.status, resp.content_type, await resp.text()


def concrete(path: str) -> str:
    return path.replace("/customers/{id}", "/customers/C1").replace("{id}", "m1")


async def test_auth_bad_parameters_and_csv(running: Running) -> None:
    status, _, text = await get(running, "/openapi.json", AUTH)
    assert status == 200
    doc = json.loads(text)
    paths = list(doc["paths"])
    for route in ("/api/v1/meters/{id}/intervals", "/api/v1/meters/{id}/settlements", "/api/v1/kpi",
                  "/api/v1/health", "/api/v1/meters", "/api/v1/meters/{id}/readings", "/metrics"):
        assert route in paths
    # auth: every route but health (the GET ones here; writes: tests/integration/test_api_roles.py)
    for p in (p for p in paths if "get" in doc["paths"][p]):
        no_token = await get(running, concrete(p))
        wrong = await get(running, concrete(p), {"Authorization": "Bearer nope"})
        right = await get(running, concrete(p), AUTH)
        assert right[0] == 200, (p, right)
        if p == "/api/v1/health":
            assert no_token[0] == 200 and "security" in doc["paths"][p]["get"]
            continue
        assert no_token[0] == 401 and wrong[0] == 401, p
        assert "token" in json.loads(no_token[2])["error"]
        assert "401" in doc["paths"][p]["get"]["responses"]
    # 400 with a sentence
    bad = [
        ("/api/v1/meters/m1/intervals?from=yesterday", "'from'"),
        ("/api/v1/meters/m1/intervals?from=2026-12-02&to=2026-12-01", "earlier"),
        ("/api/v1/meters/m1/intervals?step=5m", "'step'"),
        ("/api/v1/meters/m1/intervals?from=1900-01-01&to=1900-01-02", "between"),
        ("/api/v1/meters/m1/intervals?from=2025-01-01&to=2026-12-01", "400 days"),
        ("/api/v1/meters/m1/intervals?format=xml", "'format'"),
        ("/api/v1/meters/m1/settlements?cycle=2026-13", "YYYY-MM"),
        ("/api/v1/meters/m1/settlements?cycle=Dec", "YYYY-MM"),
        ("/api/v1/meters/m1/settlements?cycle=0001-01", "'cycle' must be a month between 1971-01 and "
                                                         "2200-12, such as 2026-11, not '0001-01'"),
        ("/api/v1/meters/m1/settlements?cycle=9999-01", "between 1971-01 and 2200-12"),
        ("/api/v1/meters/m1/settlements?table=bills&format=csv", "'table'"),
        ("/api/v1/kpi?date=2026-02-30", "YYYY-MM-DD"),
        ("/api/v1/kpi?date=0001-01-01", "between"),
        ("/api/v1/meters/m1/readings?limit=0", "'limit'"),
    ]
    for path, fragment in bad:
        status, ctype, body = await get(running, path, AUTH)
        assert status == 400, (path, status, body)
        assert ctype == "application/json"
        message = json.loads(body)["error"]
        assert fragment in message, (path, message)
        assert len(message.split()) >= 4 and "Traceback" not in message, message
    for path in ("/api/v1/meters/nope/intervals", "/api/v1/meters/nope/settlements"):
        status, _, body = await get(running, path, AUTH)
        assert status == 404 and "nope" in json.loads(body)["error"]
    # CSV on every list
    csv_routes = {
        "/api/v1/meters/m1/intervals?from=2026-12-01T00:00:00%2B08:00&format=csv": "status",
        "/api/v1/meters/d1/settlements?cycle=2026-12&format=csv": "quality",
        "/api/v1/meters/d1/settlements?cycle=2026-12&format=csv&table=stages": "energy_import_kwh_t4",
        "/api/v1/kpi?date=2026-12-01&format=csv": "read_completeness",
        "/api/v1/meters?format=csv": "last_good",
        "/api/v1/meters/m1/readings?format=csv": "point_quality",
    }
    for path, column in csv_routes.items():
        status, ctype, body = await get(running, path, AUTH)
        assert status == 200 and ctype == "text/csv", (path, status)
        rows = list(csv.DictReader(io.StringIO(body)))
        assert rows and column in rows[0], (path, body[:200])
    status, _, body = await get(running, "/api/v1/meters/d1/settlements?cycle=2026-12&format=csv", AUTH)
    rows = list(csv.DictReader(io.StringIO(body)))
    start = [r for r in rows if r["boundary_index"] == "0" and r["register"] == "energy_import_kwh"]
    assert start and start[0]["quality"] == "meter_frozen" and start[0]["current"] == "True"
    status, _, body = await get(running, "/api/v1/meters/m1/intervals?from=2026-12-01T00:00:00%2B08:00"
                                         "&format=csv", AUTH)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [r["status"] for r in rows[:2]] == ["complete", "complete"]
    assert rows[0]["energy_import_kwh"] and float(rows[0]["energy_import_kwh"]) > 0
    status, _, body = await get(running, "/api/v1/kpi?date=2026-12-01", AUTH)
    kpi = json.loads(body)
    assert {m["meter"] for m in kpi["meters"]} == {"m1", "m2", "d1", "d2"}
    assert all(m["settlements_captured"] == 1 and m["settlement_completeness"] == 1 for m in kpi["meters"])
    assert kpi["gateway"]["slots_read_good"] > 0


def _fuzz(base: str, doc: dict[str, Any]) -> list[str]:
    """Run schemathesis over every operation (in a thread: the server shares the test's loop)."""
    schema = schemathesis.openapi.from_dict(doc)
    session = requests.Session()
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    done: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), "the OpenAPI document must load without errors"
        op = result.ok()
        plans: list[tuple[Any, int]] = [(op.as_strategy(headers=AUTH), 25)]
        if doc["paths"][op.path][op.method.lower()].get("parameters"):
            plans.append((op.as_strategy(schemathesis.GenerationMode.NEGATIVE, headers=AUTH), 10))
        if "{id}" in op.path:
            for meter in ("m1", "d1"):
                plans.append((op.as_strategy(headers=AUTH, path_parameters={"id": meter}), 25))
        for strategy, examples in plans:

            @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(hypothesis.HealthCheck),
                                 phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate])
            @hypothesis.given(case=strategy)
            def run(case: schemathesis.Case[Any]) -> None:
                case.call_and_validate(base_url=base, session=session, headers=AUTH, checks=checks, timeout=30)

            run()
        done.append(op.label)
    session.close()
    return done


async def test_openapi_document_matches_the_server_under_schemathesis(running: Running) -> None:
    status, _, text = await get(running, "/openapi.json", AUTH)
    assert status == 200
    doc = json.loads(text)
    done = await asyncio.to_thread(_fuzz, running.base, doc)
    assert len(done) == sum(len(v) for v in doc["paths"].values())
    assert "GET /api/v1/meters/{id}/settlements" in done and "GET /api/v1/kpi" in done
