"""Readings out of the local store as CSV or JSON: the one place both the API and the CLI build them.

``GET /api/v1/meters/{id}/readings`` (:mod:`gateway.api.server`) and ``amr-gateway export
readings`` (:mod:`gateway.export`) select with the same SQL (:func:`iter_readings`), turn a
reading into rows with the same function (:func:`reading_csv_rows`, one row per point) and
write the same CSV dialect (:func:`write_csv`: a header row, CRLF line ends, an empty cell
for a null), so a download and an export of the same meter and range are byte-identical.
Every CSV the API serves uses this dialect.

Readings are returned as stored: the ``amr.reading.v1`` document the sinks publish, parsed
with every number an exact Decimal. The API caps a request at ``limit`` readings; the export
has no cap.
"""

from __future__ import annotations

import csv
import io
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final, TextIO

from gateway.model import iso_utc, loads_exact, to_json
from gateway.storecodec import PAYLOAD_SQL

READING_CSV_COLUMNS: Final = ("seq", "meter", "schedule", "slot", "ts", "quality", "point", "raw", "value",
                              "unit", "point_quality")
"""The columns of the readings CSV: the reading's fields, then one point's."""

_SELECT: Final = (f"SELECT {PAYLOAD_SQL} FROM outbox WHERE meter=? AND kind='reading' AND slot>=? AND slot<? "
                  "AND (? IS NULL OR schedule=?) ORDER BY slot, seq LIMIT ?")


def iter_readings(conn: sqlite3.Connection, meter: str, start: float, end: float, *,
                  schedule: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """Readings of ``meter`` with ``start <= slot < end`` (of one schedule if given), oldest first."""
    cur = conn.execute(_SELECT, (meter, start, end, schedule, schedule, -1 if limit is None else limit))
    for (payload,) in cur:
        doc = loads_exact(payload)
        assert isinstance(doc, dict)
        yield doc


def select_readings(conn: sqlite3.Connection, meter: str, start: float, end: float,
                    schedule: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """:func:`iter_readings` as a list (for ``Store.read``, which runs it on the reader thread)."""
    return list(iter_readings(conn, meter, start, end, schedule=schedule, limit=limit))


def readings_json(conn: sqlite3.Connection, meter: str, start: float, end: float, *,
                  schedule: str | None = None, limit: int | None = None) -> bytes:
    """``to_json(readings_document(...))`` of :func:`iter_readings`, built from the stored
    payloads verbatim (UTF-8).

    The payloads are the documents the sinks publish, already JSON: joining them skips
    parsing every number into a Decimal and writing it back, which for a day of readings
    cost the API's event loop more than all of delivery (issue 16 item 6). The text is the
    same as the parse-and-render path's.
    """
    cur = conn.execute(_SELECT, (meter, start, end, schedule, schedule, -1 if limit is None else limit))
    payloads = [payload for (payload,) in cur]
    head = to_json({"meter": meter, "from": iso_utc(start), "to": iso_utc(end), "count": len(payloads)})
    return "".join((head[:-1], ',"readings":[', ",".join(payloads), "]}")).encode()


def readings_csv(conn: sqlite3.Connection, meter: str, start: float, end: float, *,
                 schedule: str | None = None, limit: int | None = None) -> bytes:
    """The readings CSV (:data:`READING_CSV_COLUMNS`, :func:`write_csv`) of :func:`iter_readings`, UTF-8."""
    buf = io.StringIO()
    docs = iter_readings(conn, meter, start, end, schedule=schedule, limit=limit)
    write_csv(buf, READING_CSV_COLUMNS, reading_csv_rows(docs))
    return buf.getvalue().encode()


def reading_csv_rows(docs: Iterable[dict[str, Any]]) -> Iterator[list[object]]:
    """One CSV row per point of each reading, in :data:`READING_CSV_COLUMNS` order."""
    for d in docs:
        for name, p in (d.get("points") or {}).items():
            yield [d["seq"], d["meter"], d.get("schedule"), d["slot"], d["ts"], d["quality"], name,
                   p.get("raw"), p.get("value"), p.get("unit"), p.get("quality")]


def readings_document(meter: str, start: float, end: float, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON document of one meter's readings in ``[start, end)``: range, count, readings."""
    return {"meter": meter, "from": iso_utc(start), "to": iso_utc(end), "count": len(docs), "readings": docs}


def csv_writer(out: TextIO) -> Any:
    """A CSV writer in the gateway's dialect (CRLF line ends) on ``out``."""
    return csv.writer(out, lineterminator="\r\n")


def write_rows(writer: Any, rows: Iterable[Sequence[object]]) -> int:
    """Write rows (a null becomes an empty cell); how many were written."""
    n = 0
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
        n += 1
    return n


def write_csv(out: TextIO, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> int:
    """A header row and the rows, in the gateway's CSV dialect; how many rows (header excluded)."""
    w = csv_writer(out)
    w.writerow(columns)
    return write_rows(w, rows)


__all__ = [
    "READING_CSV_COLUMNS",
    "csv_writer",
    "iter_readings",
    "reading_csv_rows",
    "readings_csv",
    "readings_document",
    "readings_json",
    "select_readings",
    "write_csv",
    "write_rows",
]
