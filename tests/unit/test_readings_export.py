"""Readings CSV/JSON (gateway.readings_export) from a real SQLite store on disk.

The API and ``amr-gateway export readings`` both call these functions; the integration test
``test_billing_capture`` compares the two outputs byte for byte on a running gateway.
"""

from __future__ import annotations

import argparse
import io
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.export import export_csv, export_readings
from gateway.model import PointValue, Reading, to_json
from gateway.readings_export import (
    READING_CSV_COLUMNS,
    reading_csv_rows,
    readings_csv,
    readings_document,
    readings_json,
    select_readings,
    write_csv,
)
from gateway.settings import StoreSettings
from gateway.store import Store
from gateway.storecodec import register

FAST = StoreSettings(synchronous="NORMAL", commit_interval_s=0.01)
T0 = 1_767_225_600.0          # 2026-01-01T00:00:00Z


def reading(meter: str, slot: float, schedule: str = "interval", kwh: str | None = "12.5") -> Reading:
    """A reading with an exact energy point, or a failed one (``kwh=None``)."""
    value = None if kwh is None else Decimal(kwh)
    point = PointValue(value, None if value is None else value * 40, "kWh",
                       "good" if value is not None else "timeout")
    return Reading(meter=meter, customer="C1", bus="b1", schedule=schedule, slot=slot, ts=slot + 0.5,
                   points={"energy_import_kwh": point}, quality="good" if kwh is not None else "timeout",
                   ct=Decimal(40))


async def stored(tmp_path: Path) -> Path:
    store = await Store.open(tmp_path / "a.db", FAST, "gw1")
    try:
        await store.append_readings([
            reading("m1", T0), reading("m2", T0), reading("m1", T0 + 900, kwh=None),
            reading("m1", T0 + 900, schedule="realtime", kwh="12.75"), reading("m1", T0 + 1800),
        ])
    finally:
        await store.close()
    return tmp_path / "a.db"


async def test_select_filters_meter_range_and_schedule_oldest_first(tmp_path: Path) -> None:
    conn = register(sqlite3.connect(await stored(tmp_path)))
    try:
        every = select_readings(conn, "m1", T0, T0 + 1800)
        interval = select_readings(conn, "m1", T0, T0 + 1800, schedule="interval")
        capped = select_readings(conn, "m1", T0, T0 + 3600, limit=2)
    finally:
        conn.close()
    assert [(d["seq"], d["schedule"]) for d in every] == [(1, "interval"), (3, "interval"), (4, "realtime")]
    assert [d["seq"] for d in interval] == [1, 3]
    assert [d["seq"] for d in capped] == [1, 3]
    assert every[0]["points"]["energy_import_kwh"]["value"] == Decimal("500.0")


async def test_csv_bytes_one_row_per_point_null_as_empty_cell(tmp_path: Path) -> None:
    conn = register(sqlite3.connect(await stored(tmp_path)))
    try:
        buf = io.StringIO()
        n = write_csv(buf, READING_CSV_COLUMNS, reading_csv_rows(select_readings(conn, "m1", T0, T0 + 1000)))
        exported = io.StringIO()
        n_export = export_readings(conn, ["m1"], T0, T0 + 1000, exported)
    finally:
        conn.close()
    assert n == n_export == 3
    assert buf.getvalue() == exported.getvalue() == (
        "seq,meter,schedule,slot,ts,quality,point,raw,value,unit,point_quality\r\n"
        "1,m1,interval,2026-01-01T00:00:00.000Z,2026-01-01T00:00:00.500Z,good,energy_import_kwh,12.5,500.0,kWh,good\r\n"
        "3,m1,interval,2026-01-01T00:15:00.000Z,2026-01-01T00:15:00.500Z,timeout,energy_import_kwh,,,kWh,timeout\r\n"
        "4,m1,realtime,2026-01-01T00:15:00.000Z,2026-01-01T00:15:00.500Z,good,energy_import_kwh,12.75,510.00,kWh,good\r\n"
    )


async def test_the_api_bytes_are_the_parse_and_render_documents(tmp_path: Path) -> None:
    """The API's readings (JSON joined from the stored payloads, CSV) equal the documents
    built by parsing and rendering, for every filter."""
    conn = register(sqlite3.connect(await stored(tmp_path)))
    try:
        for meter, end, schedule, limit in [("m1", T0 + 1800, None, None), ("m1", T0 + 3600, "interval", None),
                                            ("m1", T0 + 3600, None, 2), ("m2", T0 + 60, None, None),
                                            ("m3", T0 + 60, None, None)]:
            docs = select_readings(conn, meter, T0, end, schedule=schedule, limit=limit)
            joined = readings_json(conn, meter, T0, end, schedule=schedule, limit=limit)
            assert joined.decode() == to_json(readings_document(meter, T0, end, docs))
            buf = io.StringIO()
            write_csv(buf, READING_CSV_COLUMNS, reading_csv_rows(docs))
            assert readings_csv(conn, meter, T0, end, schedule=schedule, limit=limit) == buf.getvalue().encode()
    finally:
        conn.close()


def test_json_document_names_range_and_count() -> None:
    docs = [{"seq": 1}, {"seq": 2}]
    assert readings_document("m1", T0, T0 + 900, docs) == {
        "meter": "m1", "from": "2026-01-01T00:00:00.000Z", "to": "2026-01-01T00:15:00.000Z", "count": 2,
        "readings": docs}


async def test_json_export_is_for_readings_only(tmp_path: Path) -> None:
    args = argparse.Namespace(what="intervals", format="json", config=tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="--format json exports readings only"):
        await export_csv(args)
