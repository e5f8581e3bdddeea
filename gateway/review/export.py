"""``amr-gateway export events``: review events from the local store as CSV, no gateway running.

Reads the store read-only (SQLite ``mode=ro``; WAL lets a running gateway keep writing),
in a worker thread so the caller's event loop stays free. Columns are those of
``GET /api/v1/events?format=csv`` (:data:`gateway.review.db.CSV_COLUMNS`).
"""

from __future__ import annotations

import asyncio
import csv
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TextIO

from gateway.review import db


def _epoch(t: float | datetime | None, default: float) -> float:
    if t is None:
        return default
    if isinstance(t, datetime):
        if t.tzinfo is None:
            raise ValueError("export_events needs aware datetimes (or epoch seconds) for start and end")
        return t.timestamp()
    return float(t)


def _write(db_path: Path, meter: str | None, start: float, end: float, out: TextIO) -> int:
    if not db_path.exists():
        raise FileNotFoundError(f"no local store at {db_path}; check data_dir in the configuration")
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30.0)
    try:
        rows = db.select_events(conn, start, end, meter, limit=10_000_000)
    finally:
        conn.close()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(db.CSV_COLUMNS)
    for ev in rows:
        w.writerow(["" if v is None else v for v in ev.csv_row()])
    return len(rows)


async def export_events(
    db_path: Path | str, meter: str | None, start: float | datetime | None, end: float | datetime | None,
    out: TextIO | Path | str,
) -> int:
    """Write the review events with ``start <= ts < end`` (of one meter, or all) as CSV.

    ``start``/``end`` are epoch seconds or aware datetimes (``None``: unbounded); ``out``
    is an open text stream or a path to write. Returns the number of events written. A
    store in which no review engine ever ran gives just the header.
    """
    path = Path(db_path)
    lo = _epoch(start, float("-inf"))
    hi = _epoch(end, float("inf"))
    if lo >= hi:
        raise ValueError("the export's start must be earlier than its end")
    if isinstance(out, str | Path):
        target = Path(out)

        def _to_file() -> int:
            with target.open("w", encoding="utf-8", newline="") as fh:
                return _write(path, meter, lo, hi, fh)

        return await asyncio.to_thread(_to_file)
    return await asyncio.to_thread(_write, path, meter, lo, hi, out)
